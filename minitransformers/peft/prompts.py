"""Soft prompts: prompt tuning and prefix tuning. The base model stays frozen; only a few vectors train.

Prompt tuning, Lester, Al-Rfou & Constant 2021, "The Power of Scale for Parameter-Efficient Prompt Tuning",
section 2: n learned vectors P ∈ R^{n×H} are prepended to the input's word vectors,

    h_0 = LayerNorm([P; E_word[x]] + E_pos[0 … n+T−1] + E_type[0 … 0; s])          (B, n + T, H)

and the frozen encoder runs over all n + T positions. As peft does for BERT (it passes the concatenation as
`inputs_embeds`), the prompt is in the word-vector slot: position and token-type vectors (type 0) are added to
it and it goes through the embedding LayerNorm. The attention mask gets n ones in front. `PromptTunedEncoder`
wraps the encoder and returns the states of the real tokens only (B, T, H), so a classifier pools as before;
`forward_with_prompt` returns all n + T. Parameters: n·H.

Paper defaults (T5, text-to-text): prompt length 100 (section 3.2: beyond 20 tokens the gains are marginal,
and with the largest model even 1 token does well); Adafactor at a constant learning rate of 0.3, batch 32,
30,000 steps. Initialisation (section 3.2, Figure 3b): class-label words best, then "sampled vocab" (the
5,000 most common tokens), random uniform in [−0.5, 0.5] worst below XXL size. Here: "vocab" (rows of the
word-embedding matrix sampled uniformly over the whole vocabulary, as peft's SAMPLE_VOCAB), "text" (a
text's token vectors, repeated or cut to n, as peft's TEXT; the label words as text give the class-label
init), or "random" (the paper's uniform range).

Prefix tuning, Li & Liang 2021, "Prefix-Tuning: Optimizing Continuous Prompts for Generation", section 4.2:
every layer l gets its own n key rows and n value rows, prepended after the projections,

    head_i = softmax(Q_i [P_k^l; K_i]ᵀ / √d + [0; M]) [P_v^l; V_i]          P_k^l, P_v^l ∈ R^{n×H}

so each query also attends to the prefix; queries are not extended, the output keeps length T. The real tokens
keep positions 0 … T−1: a prefix is keys and values, not tokens, so it takes no positions. (peft on BERT passes
the prefix as `past_key_values`, which shifts the positions to n … n+T−1; the parity test undoes that shift.)
Parameters: n·2·H·L. Section 4.3: training P directly is unstable, so it is reparameterised as
P = MLP(P'), P' ∈ R^{n×H}, MLP = Linear(H, d) → tanh → Linear(d, L·2·H); after training only P is kept
(`merge_prefix`). Paper defaults: prefix length 10 for table-to-text and 200 for summarization (section 7.2),
the MLP reparameterisation; its hidden size d is peft's `encoder_hidden_size`, which defaults to H.

Names: parameters contain `prompt` or `prefix`; the base keeps every name. Each method overrides one step of
the modules it changes and leaves their parameters where they are: prompt tuning makes the encoder a
`PromptTunedEncoder`, which feeds [P; E_word[x]] to the encoder as `inputs_embeds` (adding `encoder.prompt`);
prefix tuning makes each attention a `PrefixSelfAttention`, whose `attend` step prepends the prefix to K and V
(adding `encoder.prefix.…`). The class of the existing module is swapped, as `torch.nn.utils.parametrize` does,
so that `remove_prompt_tuning` / `remove_prefix_tuning` give the very same modules back.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..model.attention import SelfAttention
from ..model.encoder import Encoder
from ..text.tokenizer import Tokenizer
from .common import PEFTModule, attach, base_requires_grad, detach, mark_only_trainable, refuse_stacking

PROMPT_INITS = ("random", "vocab", "text")


@dataclass
class PromptTuningConfig:
    """`add_prompt_tuning`'s options: n learned vectors and how they start (the tokenizer is passed apart)."""

    num_virtual_tokens: int = 20
    init: str = "vocab"
    init_text: str | None = None


@dataclass
class PrefixTuningConfig:
    """`add_prefix_tuning`'s options: n key/value rows per layer, learned through the paper's MLP or directly."""

    num_virtual_tokens: int = 20
    reparameterize: bool = True
    projection_dim: int | None = None


def _encoder_of(model: nn.Module) -> Encoder:
    encoder = getattr(model, "encoder", None)
    if not isinstance(encoder, Encoder):
        raise TypeError(f"expected a model with an Encoder at `.encoder` (SequenceClassifier, MaskedLM); got {type(model).__name__} whose encoder is {type(encoder).__name__}")
    return encoder


# ---------------------------------------------------------------------------------------------------------------
# Prompt tuning


class PromptTunedEncoder(PEFTModule, Encoder):
    """An Encoder run over [P; x]: its forward builds the prompted word vectors and calls the encoder's own forward
    with them as `inputs_embeds`. Made by `add_prompt_tuning` from an existing Encoder (its class swapped, its
    modules and names kept); `prompt` (n, H) is the one new parameter."""

    prompt: nn.Parameter

    @property
    def num_virtual_tokens(self) -> int:
        return self.prompt.size(0)

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, inputs_embeds=None) -> torch.Tensor:
        """-> the real tokens' states (B, T, H): position 0 is again [CLS], and a mask (B, T) still fits them."""
        if not self.enabled:
            return super().forward(input_ids, attention_mask, token_type_ids, inputs_embeds)
        return self.forward_with_prompt(input_ids, attention_mask, token_type_ids, inputs_embeds)[:, self.num_virtual_tokens :]

    def forward_with_prompt(self, input_ids=None, attention_mask=None, token_type_ids=None, inputs_embeds=None) -> torch.Tensor:
        """-> the states of the prompt and the input (B, n + T, H)."""
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("give exactly one of input_ids and inputs_embeds")
        words = self.embeddings.word(input_ids) if inputs_embeds is None else inputs_embeds  # (B, T, H)
        (B, T, _), n = words.shape, self.num_virtual_tokens
        limit = self.config.max_position_embeddings
        if n + T > limit:
            raise ValueError(f"{n} virtual tokens + {T} input tokens = {n + T} positions, more than max_position_embeddings {limit}; truncate the input to {limit - n} tokens or use fewer virtual tokens")
        embeds = torch.cat([self.prompt.to(words.dtype).expand(B, n, -1), words], dim=1)  # (B, n + T, H)
        if attention_mask is not None:
            attention_mask = torch.cat([attention_mask.new_ones(B, n), attention_mask], dim=1)  # (B, n + T)
        if token_type_ids is not None:
            token_type_ids = torch.cat([token_type_ids.new_zeros(B, n), token_type_ids], dim=1)  # (B, n + T)
        return super().forward(attention_mask=attention_mask, token_type_ids=token_type_ids, inputs_embeds=embeds)


def init_prompt(word_embeddings: nn.Embedding, num_virtual_tokens: int, init: str, init_text: str | None = None, tokenizer: Tokenizer | None = None) -> torch.Tensor:
    """The initial P (n, H): see the module docstring for the three ways."""
    n, (V, H) = num_virtual_tokens, word_embeddings.weight.shape
    if init == "random":
        return torch.empty(n, H).uniform_(-0.5, 0.5)
    if init == "vocab":
        ids = torch.randint(0, V, (n,))
    elif init == "text":
        if init_text is None or tokenizer is None:
            raise ValueError("init 'text' needs init_text and the tokenizer of the model")
        # As peft: the text with its special tokens ([CLS] … [SEP]), repeated until n ids, then cut to n.
        text_ids = tokenizer.encode([init_text])[0][0]
        ids = torch.tensor((text_ids * -(-n // len(text_ids)))[:n])
    else:
        raise ValueError(f"unknown prompt init {init!r}; use one of {PROMPT_INITS}")
    return word_embeddings.weight[ids.to(word_embeddings.weight.device)].detach().float().clone()  # (n, H)


def add_prompt_tuning(model: nn.Module, num_virtual_tokens: int = 20, init: str = "vocab", init_text: str | None = None, tokenizer: Tokenizer | None = None) -> nn.Module:
    """Replace `model.encoder` by a `PromptTunedEncoder` with n = `num_virtual_tokens` learned vectors, and
    freeze all but the prompt and the head. Returns the model.

    Defaults: 20 tokens (Lester et al. section 3.2: gains past 20 are marginal; the paper's runs use 100) and
    "vocab" init (sampled vocabulary beats random init in the paper; peft's default is random).

    Pooling: the classifier pools the real tokens, not the prompt. peft's BERT classifier pools position 0 of
    [P; x], the first *virtual* token, through BERT's pooler. We pool the real [CLS] (or average the real
    tokens), because that is the vector the pretrained pooler and sentence embeddings were trained on, mean
    pooling must not average learned vectors into a sentence embedding, and the head then reads the same
    token whatever the method, so methods compare like for like.
    """
    if num_virtual_tokens < 1:
        raise ValueError(f"num_virtual_tokens is {num_virtual_tokens}; use at least 1")
    encoder = _encoder_of(model)
    refuse_stacking(model, "prompt_tuning")
    frozen = base_requires_grad(model)
    prompt = init_prompt(encoder.embeddings.word, num_virtual_tokens, init, init_text, tokenizer)
    encoder.__class__ = PromptTunedEncoder  # the same module, its forward now prepends the prompt
    encoder.prompt = nn.Parameter(prompt.to(encoder.embeddings.word.weight.device))  # P (n, H)
    attach(model, "prompt_tuning", frozen)
    return mark_only_trainable(model, ("prompt",))


def remove_prompt_tuning(model: nn.Module) -> nn.Module:
    """The base model back: the encoder a plain Encoder again, without its prompt. Prompt tuning has no merge:
    the prompt is an input, not a change of any weight."""
    encoder = _encoder_of(model)
    del encoder.prompt
    encoder.__class__ = Encoder
    return detach(model, "prompt_tuning")


# ---------------------------------------------------------------------------------------------------------------
# Prefix tuning


class PrefixTable(nn.Module):
    """The prefixes as plain parameters: `table` (L, 2, n, H), keys [l, 0] and values [l, 1] of every layer."""

    def __init__(self, table: torch.Tensor):
        super().__init__()
        self.table = nn.Parameter(table)

    def forward(self) -> torch.Tensor:
        return self.table  # (L, 2, n, H)


class PrefixMLP(nn.Module):
    """Li & Liang section 4.3: P = MLP(P'), with P' (n, H) and MLP = Linear(H, d) → tanh → Linear(d, L·2·H)."""

    def __init__(self, num_virtual_tokens: int, hidden_size: int, num_layers: int, projection_dim: int):
        super().__init__()
        self.num_layers = num_layers
        self.embedding = nn.Parameter(torch.randn(num_virtual_tokens, hidden_size))  # P' (n, H), N(0, 1) as peft
        self.up = nn.Linear(hidden_size, projection_dim)
        self.down = nn.Linear(projection_dim, num_layers * 2 * hidden_size)

    def forward(self) -> torch.Tensor:
        flat = self.down(torch.tanh(self.up(self.embedding)))  # (n, L·2·H), peft's layout
        n, H = self.embedding.shape
        return flat.view(n, self.num_layers, 2, H).permute(1, 2, 0, 3)  # (L, 2, n, H)


class PrefixSelfAttention(PEFTModule, SelfAttention):
    """A SelfAttention whose `attend` step puts layer `layer`'s prefix in front of its keys and values. Made by
    `add_prefix_tuning` from an existing SelfAttention (its class swapped; its projections and names kept). The
    prefix module is held, not registered: the encoder owns it (`encoder.prefix`), so that its parameters appear
    once in the state dict, and one MLP serves every layer."""

    layer: int

    def attend(self, q, k, v, bias):
        """q (B, nh, T, hd), k, v (B, nh, T, hd) -> softmax(Q [P_k; K]ᵀ / √d + [0; M]) [P_v; V]: (B, nh, T, hd)."""
        if not self.enabled:
            return super().attend(q, k, v, bias)
        B = k.size(0)
        prefix_k, prefix_v = self.prefix()[self.layer].to(k.dtype)  # (n, H) each; the MLP runs per layer, tiny next to it
        n = prefix_k.size(0)
        k = torch.cat([self.split_heads(prefix_k.expand(B, n, -1)), k], dim=2)  # (B, nh, n + T, hd)
        v = torch.cat([self.split_heads(prefix_v.expand(B, n, -1)), v], dim=2)  # (B, nh, n + T, hd)
        if bias is not None:
            bias = torch.cat([bias.new_zeros(bias.size(0), 1, 1, n), bias], dim=-1)  # (B, 1, 1, n + T): the prefix is never masked
        return super().attend(q, k, v, bias)


def _prefix_attentions(encoder: Encoder) -> list[PrefixSelfAttention]:
    return [layer.attention for layer in encoder.layers if isinstance(layer.attention, PrefixSelfAttention)]


def add_prefix_tuning(model: nn.Module, num_virtual_tokens: int = 20, reparameterize: bool = True, projection_dim: int | None = None) -> nn.Module:
    """Give every layer's attention a learned key/value prefix of n = `num_virtual_tokens` rows, and freeze all
    but the prefix and the head. Returns the model.

    reparameterize: learn P through the paper's MLP (section 4.3; peft's `prefix_projection`, off by default
    there); `merge_prefix` drops the MLP after training. projection_dim: the MLP's hidden size d, by default
    the model's hidden size H (peft's `encoder_hidden_size` default). Defaults: 20 rows (peft's examples;
    the paper uses 10 for table-to-text and 200 for summarization). Initialisation as peft: P' or P ~ N(0, 1).
    """
    if num_virtual_tokens < 1:
        raise ValueError(f"num_virtual_tokens is {num_virtual_tokens}; use at least 1")
    if projection_dim is not None and not reparameterize:
        raise ValueError("projection_dim sizes the reparameterisation MLP; pass reparameterize=True or drop projection_dim")
    encoder = _encoder_of(model)
    refuse_stacking(model, "prefix_tuning")
    frozen = base_requires_grad(model)
    L, H = encoder.config.num_layers, encoder.config.hidden_size
    device = encoder.embeddings.word.weight.device
    if reparameterize:
        encoder.prefix = PrefixMLP(num_virtual_tokens, H, L, projection_dim or H).to(device)
    else:
        encoder.prefix = PrefixTable(torch.randn(L, 2, num_virtual_tokens, H, device=device))
    for i, layer in enumerate(encoder.layers):
        layer.attention.__class__ = PrefixSelfAttention  # the same module, its attend step now sees the prefix
        layer.attention.layer = i
        object.__setattr__(layer.attention, "prefix", encoder.prefix)
    attach(model, "prefix_tuning", frozen)
    return mark_only_trainable(model, ("prefix",))


def remove_prefix_tuning(model: nn.Module) -> nn.Module:
    """The base model back: every attention a plain SelfAttention again, the prefix gone."""
    encoder = _encoder_of(model)
    for attention in _prefix_attentions(encoder):
        del attention.layer, attention.prefix
        attention.__class__ = SelfAttention
    del encoder.prefix
    return detach(model, "prefix_tuning")


def merge_prefix(model: nn.Module) -> nn.Module:
    """Replace the reparameterisation MLP by the prefixes it computes, P = MLP(P'), stored as a `PrefixTable`
    (trainable, the layout of `add_prefix_tuning(reparameterize=False)`). Outputs are unchanged."""
    encoder = _encoder_of(model)
    if not isinstance(getattr(encoder, "prefix", None), PrefixMLP):
        raise ValueError("this model has no prefix MLP to merge; was it prepared with add_prefix_tuning(reparameterize=True)?")
    with torch.no_grad():
        encoder.prefix = PrefixTable(encoder.prefix().contiguous())  # (L, 2, n, H), a copy: the MLP output is permuted
    for attention in _prefix_attentions(encoder):
        object.__setattr__(attention, "prefix", encoder.prefix)
    return model


__all__ = [
    "PromptTunedEncoder", "PrefixSelfAttention", "PrefixTable", "PrefixMLP", "init_prompt",
    "add_prompt_tuning", "remove_prompt_tuning", "add_prefix_tuning", "remove_prefix_tuning", "merge_prefix",
]  # fmt: skip
