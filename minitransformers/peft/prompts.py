"""Soft prompts: prompt tuning and prefix tuning. The base model stays frozen; only a few vectors train.

Prompt tuning, Lester, Al-Rfou & Constant 2021, "The Power of Scale for Parameter-Efficient Prompt Tuning",
section 2: n learned vectors P ∈ R^{n×H} are prepended to the input's word vectors,

    h_0 = LayerNorm([P; E_word[x]] + E_pos[0 … n+T−1] + E_type[0 … 0; s])          (B, n + T, H)

and the frozen encoder runs over all n + T positions. As peft does for BERT (it passes the concatenation as
`inputs_embeds`), the prompt is in the word-vector slot: position and token-type vectors (type 0) are added to
it and it goes through the embedding LayerNorm. The attention mask gets n ones in front. `PromptTunedEncoder`
wraps the encoder and returns the states of the real tokens only (B, T, H), so a classifier pools as before;
`forward_with_prompt` returns all n + T. Parameters: n·H.

On the decoder (model/decoder.py), as peft does for a causal LM (it prepends the prompt to `inputs_embeds` and
extends the attention mask): h_0 = [P; E[x]], the prompt takes rotary positions 0 … n−1 and the real tokens
n … n+T−1, and causal attention lets every real token see the whole prompt. `PromptTunedDecoder` returns the
real tokens' states (B, T, H). Generating, the prompt fills the first n cache slots at the prefill; the
caller's masks, positions and slots count the real tokens only, so generate.py runs it unchanged.

Paper defaults (T5, text-to-text): prompt length 100 (section 3.2: beyond 20 tokens the gains are marginal,
and with the largest model even 1 token does well); Adafactor at a constant learning rate of 0.3, batch 32,
30,000 steps. Initialisation (section 3.2, Figure 3b): class-label words best, then "sampled vocab" (the
5,000 most common tokens), random uniform in [−0.5, 0.5] worst below XXL size. Here: "vocab" (rows of the
word-embedding matrix sampled uniformly over the whole vocabulary, as peft's SAMPLE_VOCAB), "text" (a
text's token vectors, repeated or cut to n, as peft's TEXT; the label words as text give the class-label
init), or "random" (the paper's uniform range).

Prefix tuning, Li & Liang 2021, "Prefix-Tuning: Optimizing Continuous Prompts for Generation", section 4.2:
every layer l gets its own n key rows and n value rows, prepended after the projections,

    head_i = softmax(Q_i [P_k^l; K_i]ᵀ / √d + [0; M]) [P_v^l; V_i]          P_k^l, P_v^l ∈ R^{n×Hkv}

so each query also attends to the prefix; queries are not extended, the output keeps length T. The real tokens
keep positions 0 … T−1: a prefix is keys and values, not tokens, so it takes no positions. (peft passes the
prefix as `past_key_values`, which shifts the positions to n … n+T−1, on BERT and on Llama alike; the parity
tests undo that shift.) A prefix row has the width of a key, Hkv = num_kv_heads · head_dim: H on the encoder,
less on a decoder with grouped-query attention (peft's `token_dim` for such models). On the decoder the prefix
keys are not rotated (peft's cached keys are not either) and come before every cache slot, at every step.
Parameters: n·2·Hkv·L. Section 4.3: training P directly is unstable, so it is reparameterised as
P = MLP(P'), P' ∈ R^{n×Hkv}, MLP = Linear(Hkv, d) → tanh → Linear(d, L·2·Hkv); after training only P is kept
(`merge_prefix`). Paper defaults: prefix length 10 for table-to-text and 200 for summarization (section 7.2),
the MLP reparameterisation; its hidden size d is peft's `encoder_hidden_size`, which defaults to Hkv.

Names: parameters contain `prompt` or `prefix`; the base keeps every name. Each method overrides one step of
the modules it changes and leaves their parameters where they are: prompt tuning makes the encoder a
`PromptTunedEncoder` (the decoder a `PromptTunedDecoder`), which feeds [P; E_word[x]] to it as `inputs_embeds`
(adding `encoder.prompt` or `decoder.prompt`); prefix tuning gives each attention the `PrefixAttention` step
`attend`, which prepends the prefix to K and V, on top of the attention's own class (`SelfAttention` ->
`PrefixSelfAttention`, the decoder's `CausalSelfAttention`, with its rotary and cache `project` step, ->
`PrefixCausalSelfAttention`), adding `encoder.prefix.…` or `decoder.prefix.…`. The class of the existing module
is swapped, as `torch.nn.utils.parametrize` does, so that `remove_prompt_tuning` / `remove_prefix_tuning` give
the very same modules, of their very classes, back.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import InputError
from ..model.attention import SelfAttention
from ..model.decoder import Decoder
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


def _base_of(model: nn.Module) -> Encoder | Decoder:
    """The model's Encoder (`model.encoder`) or Decoder (`model.decoder`), which the soft prompts patch."""
    encoder, decoder = getattr(model, "encoder", None), getattr(model, "decoder", None)
    if isinstance(encoder, Encoder):
        return encoder
    if isinstance(decoder, Decoder):
        return decoder
    raise TypeError(f"expected a model with an Encoder at `.encoder` (SequenceClassifier, MaskedLM) or a Decoder at `.decoder` (CausalLM); "
                    f"got {type(model).__name__} whose encoder is {type(encoder).__name__} and decoder {type(decoder).__name__}")


def _word_embeddings(base: Encoder | Decoder) -> nn.Embedding:
    return base.embeddings.word if isinstance(base, Encoder) else base.embed


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
            raise InputError("give exactly one of input_ids and inputs_embeds")
        words = self.embeddings.word(input_ids) if inputs_embeds is None else inputs_embeds  # (B, T, H)
        (B, T, _), n = words.shape, self.num_virtual_tokens
        limit = self.config.max_position_embeddings
        if n + T > limit:
            raise InputError(f"{n} virtual tokens + {T} input tokens = {n + T} positions, more than max_position_embeddings {limit}; truncate the input to {limit - n} tokens or use fewer virtual tokens")
        embeds = torch.cat([self.prompt.to(words.dtype).expand(B, n, -1), words], dim=1)  # (B, n + T, H)
        if attention_mask is not None:
            attention_mask = torch.cat([attention_mask.new_ones(B, n), attention_mask], dim=1)  # (B, n + T)
        if token_type_ids is not None:
            token_type_ids = torch.cat([token_type_ids.new_zeros(B, n), token_type_ids], dim=1)  # (B, n + T)
        return super().forward(attention_mask=attention_mask, token_type_ids=token_type_ids, inputs_embeds=embeds)


class PromptTunedDecoder(PEFTModule, Decoder):
    """A Decoder run over [P; x]: the prompt takes positions and cache slots 0 … n−1, the real tokens follow. The
    masks, positions and slots its forward is given count the real tokens only; it shifts them by n. Made by
    `add_prompt_tuning` from an existing Decoder (its class swapped); `prompt` (n, H) is the one new parameter."""

    prompt: nn.Parameter

    @property
    def num_virtual_tokens(self) -> int:
        return self.prompt.size(0)

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, caches=None, cache_position=None, inputs_embeds=None) -> torch.Tensor:
        """-> the real tokens' states (B, T, H). Without caches, and at the prefill (the call that writes slot 0), the
        prompt goes in front, and each cache gets n more slots for it; a decode step then writes at its slot + n."""
        if not self.enabled:
            return super().forward(input_ids, attention_mask, position_ids, caches, cache_position, inputs_embeds)
        if (input_ids is None) == (inputs_embeds is None):
            raise InputError("give exactly one of input_ids and inputs_embeds")
        if caches is not None and cache_position is None:
            raise InputError("decoding with caches needs cache_position, the slots the T new tokens take")
        words = self.embed(input_ids) if inputs_embeds is None else inputs_embeds  # (B, T, H)
        (B, T, _), n = words.shape, self.num_virtual_tokens
        if attention_mask is not None:
            attention_mask = torch.cat([attention_mask.new_ones(B, n), attention_mask], dim=1)  # (B, n + T), or n + S slots
        if position_ids is not None:
            position_ids = position_ids + n  # (B, T): the real tokens come after the prompt
        if caches is not None and int(cache_position[0]) > 0:  # a decode step: the prompt is in slots 0 … n−1 already
            return super().forward(None, attention_mask, position_ids, caches, cache_position + n, words)
        S, limit = T if caches is None else caches[0].k.size(2), self.config.max_position_embeddings
        if n + S > limit:
            raise InputError(f"{n} virtual tokens + {S} tokens = {n + S} positions, more than max_position_embeddings {limit}; use at most {limit - n} tokens (input and new ones) or fewer virtual tokens")
        first = torch.arange(n, device=words.device)  # (n,): the prompt's positions and slots
        if position_ids is not None:
            position_ids = torch.cat([first.expand(B, n), position_ids], dim=1)  # (B, n + T)
        if caches is not None:
            for cache in caches:  # made for the real tokens (B, nkv, S, hd), as generate.py makes them: n more slots
                cache.k, cache.v = (t.new_zeros(*t.shape[:2], n + S, t.size(3)) for t in (cache.k, cache.v))  # (B, nkv, n + S, hd)
            cache_position = torch.cat([first, cache_position + n])  # (n + T,)
        embeds = torch.cat([self.prompt.to(words.dtype).expand(B, n, -1), words], dim=1)  # (B, n + T, H)
        return super().forward(None, attention_mask, position_ids, caches, cache_position, embeds)[:, n:]


PROMPT_TUNED = {Encoder: PromptTunedEncoder, Decoder: PromptTunedDecoder}  # the base's class -> its prompt-tuned class


def init_prompt(word_embeddings: nn.Embedding, num_virtual_tokens: int, init: str, init_text: str | None = None, tokenizer: Tokenizer | None = None) -> torch.Tensor:
    """The initial P (n, H): see the module docstring for the three ways."""
    n, (V, H) = num_virtual_tokens, word_embeddings.weight.shape
    if init == "random":
        return torch.empty(n, H).uniform_(-0.5, 0.5)
    if init == "vocab":
        ids = torch.randint(0, V, (n,))
    elif init == "text":
        if init_text is None or tokenizer is None:
            raise InputError("init 'text' needs init_text and the tokenizer of the model")
        # As peft: the text with the special tokens the tokenizer adds ([CLS] … [SEP]; none for SmolLM2's), repeated
        # until n ids, then cut to n.
        text_ids = tokenizer([init_text])["input_ids"][0].tolist()
        ids = torch.tensor((text_ids * -(-n // len(text_ids)))[:n])
    else:
        raise InputError(f"unknown prompt init {init!r}; use one of {PROMPT_INITS}")
    return word_embeddings.weight[ids.to(word_embeddings.weight.device)].detach().float().clone()  # (n, H)


def add_prompt_tuning(model: nn.Module, num_virtual_tokens: int = 20, init: str = "vocab", init_text: str | None = None, tokenizer: Tokenizer | None = None) -> nn.Module:
    """Make `model.encoder` a `PromptTunedEncoder` (`model.decoder` a `PromptTunedDecoder`) with n =
    `num_virtual_tokens` learned vectors, and freeze all but the prompt and the head. Returns the model.

    Defaults: 20 tokens (Lester et al. section 3.2: gains past 20 are marginal; the paper's runs use 100) and
    "vocab" init (sampled vocabulary beats random init in the paper; peft's default is random).

    Pooling: the classifier pools the real tokens, not the prompt. peft's BERT classifier pools position 0 of
    [P; x], the first *virtual* token, through BERT's pooler. We pool the real [CLS] (or average the real
    tokens), because that is the vector the pretrained pooler and sentence embeddings were trained on, mean
    pooling must not average learned vectors into a sentence embedding, and the head then reads the same
    token whatever the method, so methods compare like for like. A causal LM reads the real tokens' logits.
    """
    if num_virtual_tokens < 1:
        raise InputError(f"num_virtual_tokens is {num_virtual_tokens}; use at least 1")
    base = _base_of(model)
    refuse_stacking(model, "prompt_tuning")
    frozen = base_requires_grad(model)
    words = _word_embeddings(base)
    prompt = init_prompt(words, num_virtual_tokens, init, init_text, tokenizer)
    base.__class__ = PROMPT_TUNED[type(base)]  # the same module, its forward now prepends the prompt
    base.prompt = nn.Parameter(prompt.to(words.weight.device))  # P (n, H)
    attach(model, "prompt_tuning", frozen)
    return mark_only_trainable(model, ("prompt",))


def remove_prompt_tuning(model: nn.Module) -> nn.Module:
    """The base model back: the encoder a plain Encoder (the decoder a plain Decoder) again, without its prompt.
    Prompt tuning has no merge: the prompt is an input, not a change of any weight."""
    base = _base_of(model)
    del base.prompt
    base.__class__ = {prompted: plain for plain, prompted in PROMPT_TUNED.items()}[type(base)]
    return detach(model, "prompt_tuning")


# ---------------------------------------------------------------------------------------------------------------
# Prefix tuning


class PrefixTable(nn.Module):
    """The prefixes as plain parameters: `table` (L, 2, n, Hkv), keys [l, 0] and values [l, 1] of every layer."""

    def __init__(self, table: torch.Tensor):
        super().__init__()
        self.table = nn.Parameter(table)

    def forward(self) -> torch.Tensor:
        return self.table  # (L, 2, n, Hkv)


class PrefixMLP(nn.Module):
    """Li & Liang section 4.3: P = MLP(P'), with P' (n, Hkv) and MLP = Linear(Hkv, d) → tanh → Linear(d, L·2·Hkv)."""

    def __init__(self, num_virtual_tokens: int, width: int, num_layers: int, projection_dim: int):
        super().__init__()
        self.num_layers = num_layers
        self.embedding = nn.Parameter(torch.randn(num_virtual_tokens, width))  # P' (n, Hkv), N(0, 1) as peft
        self.up = nn.Linear(width, projection_dim)
        self.down = nn.Linear(projection_dim, num_layers * 2 * width)

    def forward(self) -> torch.Tensor:
        flat = self.down(torch.tanh(self.up(self.embedding)))  # (n, L·2·Hkv), peft's layout
        n, width = self.embedding.shape
        return flat.view(n, self.num_layers, 2, width).permute(1, 2, 0, 3)  # (L, 2, n, Hkv)


class PrefixAttention(PEFTModule):
    """The one step prefix tuning changes in a SelfAttention (or any subclass): `attend` puts layer `layer`'s
    prefix in front of its keys and values. `with_prefix` puts it on top of the attention's own class, so that
    the other steps (the decoder's rotary and cache `project`) stay the attention's own. The prefix module is
    held, not registered: the base owns it (`encoder.prefix`, `decoder.prefix`), so that its parameters appear
    once in the state dict, and one MLP serves every layer."""

    layer: int

    def attend(self, q, k, v, bias):
        """q (B, nh, T, hd), k, v (B, nkv, S, hd) -> softmax(Q [P_k; K]ᵀ / √d + [0; M]) [P_v; V]: (B, nh, T, hd)."""
        if not self.enabled:
            return super().attend(q, k, v, bias)
        B = k.size(0)
        prefix_k, prefix_v = self.prefix()[self.layer].to(k.dtype)  # (n, Hkv) each; the MLP runs per layer, tiny next to it
        n = prefix_k.size(0)
        k = torch.cat([self.split_heads(prefix_k.expand(B, n, -1)), k], dim=2)  # (B, nkv, n + S, hd)
        v = torch.cat([self.split_heads(prefix_v.expand(B, n, -1)), v], dim=2)  # (B, nkv, n + S, hd)
        if bias is not None:  # (B, 1, 1, S) from the encoder, (B, 1, T, S) from the decoder
            bias = torch.cat([bias.new_zeros(*bias.shape[:-1], n), bias], dim=-1)  # (B, 1, 1 or T, n + S): the prefix is never masked
        return super().attend(q, k, v, bias)


@functools.cache
def with_prefix(attention_class: type[SelfAttention]) -> type:
    """The class `Prefix<attention_class>`: PrefixAttention's `attend` over the rest of `attention_class`, which it
    keeps as `base_class`, for `remove_prefix_tuning`. Made once per class, so all layers share one."""
    return type(f"Prefix{attention_class.__name__}", (PrefixAttention, attention_class), {"__module__": __name__, "base_class": attention_class})


PrefixSelfAttention = with_prefix(SelfAttention)  # the encoder's


def _prefix_attentions(base: Encoder | Decoder) -> list[PrefixAttention]:
    return [layer.attention for layer in base.layers if isinstance(layer.attention, PrefixAttention)]


def add_prefix_tuning(model: nn.Module, num_virtual_tokens: int = 20, reparameterize: bool = True, projection_dim: int | None = None) -> nn.Module:
    """Give every layer's attention a learned key/value prefix of n = `num_virtual_tokens` rows, and freeze all
    but the prefix and the head. Returns the model.

    reparameterize: learn P through the paper's MLP (section 4.3; peft's `prefix_projection`, off by default
    there); `merge_prefix` drops the MLP after training. projection_dim: the MLP's hidden size d, by default
    the width of a key, Hkv (peft's `encoder_hidden_size` default; H on the encoder). Defaults: 20 rows (peft's
    examples; the paper uses 10 for table-to-text and 200 for summarization). Initialisation as peft: P' or
    P ~ N(0, 1).
    """
    if num_virtual_tokens < 1:
        raise InputError(f"num_virtual_tokens is {num_virtual_tokens}; use at least 1")
    if projection_dim is not None and not reparameterize:
        raise InputError("projection_dim sizes the reparameterisation MLP; pass reparameterize=True or drop projection_dim")
    base = _base_of(model)
    refuse_stacking(model, "prefix_tuning")
    frozen = base_requires_grad(model)
    attention = base.layers[0].attention
    L, width = len(base.layers), attention.num_kv_heads * attention.head_dim  # Hkv
    device = _word_embeddings(base).weight.device
    if reparameterize:
        base.prefix = PrefixMLP(num_virtual_tokens, width, L, projection_dim or width).to(device)
    else:
        base.prefix = PrefixTable(torch.randn(L, 2, num_virtual_tokens, width, device=device))
    for i, layer in enumerate(base.layers):
        layer.attention.__class__ = with_prefix(type(layer.attention))  # the same module, its attend step now sees the prefix
        layer.attention.layer = i
        object.__setattr__(layer.attention, "prefix", base.prefix)
    attach(model, "prefix_tuning", frozen)
    return mark_only_trainable(model, ("prefix",))


def remove_prefix_tuning(model: nn.Module) -> nn.Module:
    """The base model back: every attention of its own class again (SelfAttention, CausalSelfAttention), the prefix gone."""
    base = _base_of(model)
    for attention in _prefix_attentions(base):
        del attention.layer, attention.prefix
        attention.__class__ = attention.base_class
    del base.prefix
    return detach(model, "prefix_tuning")


def merge_prefix(model: nn.Module) -> nn.Module:
    """Replace the reparameterisation MLP by the prefixes it computes, P = MLP(P'), stored as a `PrefixTable`
    (trainable, the layout of `add_prefix_tuning(reparameterize=False)`). Outputs are unchanged."""
    base = _base_of(model)
    if not isinstance(getattr(base, "prefix", None), PrefixMLP):
        raise InputError("this model has no prefix MLP to merge; was it prepared with add_prefix_tuning(reparameterize=True)?")
    with torch.no_grad():
        base.prefix = PrefixTable(base.prefix().contiguous())  # (L, 2, n, Hkv), a copy: the MLP output is permuted
    for attention in _prefix_attentions(base):
        object.__setattr__(attention, "prefix", base.prefix)
    return model


__all__ = [
    "PromptTunedEncoder", "PromptTunedDecoder", "PrefixAttention", "PrefixSelfAttention", "with_prefix", "PrefixTable",
    "PrefixMLP", "init_prompt", "add_prompt_tuning", "remove_prompt_tuning", "add_prefix_tuning", "remove_prefix_tuning",
    "merge_prefix",
]  # fmt: skip
