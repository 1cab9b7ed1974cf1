"""The BERT encoder: embeddings, then a stack of post-LN transformer layers.

Devlin et al. 2019, "BERT", section 3, on the Transformer encoder of Vaswani et al. 2017, section 3.1:

    h_0 = LayerNorm(E_word[x] + E_pos[t] + E_type[s])                        (BERT, Figure 2)
    a_l = LayerNorm(h_{l-1} + Dropout(MultiHead(h_{l-1})))                    (post-LN: norm after the add)
    h_l = LayerNorm(a_l + Dropout(W_2 GELU(W_1 a_l + b_1) + b_2))

`Encoder(input_ids, attention_mask, token_type_ids)` returns h_L, the last hidden states (B, T, H).
BERT's pooler, when the checkpoint has one, sits beside the stack as `encoder.pooler` (it is part of HF's
BertModel); the classifier head in heads.py may use it.

Gradient checkpointing (Chen et al. 2016, "Training Deep Nets with Sublinear Memory Cost"): with
`encoder.gradient_checkpointing = True`, training keeps only each layer's input for backward and runs the
layer's forward again during backward to rebuild what it needs (`torch.utils.checkpoint`, non-reentrant,
with the dropout masks replayed). The activations kept for backward shrink from every intermediate of every
layer to one (B, T, H) tensor per layer, for about one more forward pass of compute.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..errors import InputError
from ..config import GELU_APPROXIMATION, EncoderConfig
from ..io import hf
from .attention import SelfAttention, padding_bias
from .unpad import Packing


class Embeddings(nn.Module):
    def __init__(self, config: EncoderConfig):
        super().__init__()
        H = config.hidden_size
        self.word = nn.Embedding(config.vocab_size, H, padding_idx=config.pad_token_id)
        self.position = nn.Embedding(config.max_position_embeddings, H)
        self.token_type = nn.Embedding(config.type_vocab_size, H)
        self.norm = nn.LayerNorm(H, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout)

    def forward(self, input_ids: torch.Tensor | None, token_type_ids: torch.Tensor, inputs_embeds: torch.Tensor | None = None) -> torch.Tensor:
        """Word vectors E_word[x], or `inputs_embeds` (B, T, H) given in their place (soft prompts, peft/prompts.py)."""
        words = self.word(input_ids) if inputs_embeds is None else inputs_embeds  # (B, T, H)
        T = words.size(1)
        if T > self.position.num_embeddings:
            raise InputError(f"sequence length {T} exceeds max_position_embeddings {self.position.num_embeddings}; truncate the input")
        positions = torch.arange(T, device=words.device)  # (T,)
        x = words + self.position(positions) + self.token_type(token_type_ids)  # (B, T, H)
        return self.dropout(self.norm(x))


class FeedForward(nn.Module):
    """W_2 GELU(W_1 x + b_1) + b_2, with the hidden size expanded to intermediate_size (4H in BERT)."""

    def __init__(self, config: EncoderConfig):
        super().__init__()
        self.up = nn.Linear(config.hidden_size, config.intermediate_size)
        self.down = nn.Linear(config.intermediate_size, config.hidden_size)
        self.approximate = GELU_APPROXIMATION[config.hidden_act]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(F.gelu(self.up(x), approximate=self.approximate))


class EncoderLayer(nn.Module):
    def __init__(self, config: EncoderConfig):
        super().__init__()
        self.attention = SelfAttention.for_encoder(config)
        self.attention_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.ffn = FeedForward(config)
        self.ffn_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout)

    def forward(self, x: torch.Tensor, bias: torch.Tensor | None, packing: Packing | None = None) -> torch.Tensor:
        """x (B, T, H), or (N, H) real tokens when `packing` says where they sit."""
        x = self.attention_norm(x + self.dropout(self.attention(x, bias, packing)))
        return self.ffn_norm(x + self.dropout(self.ffn(x)))


class Pooler(nn.Module):
    """BERT's pooler: tanh(W h_CLS + b), the layer next-sentence prediction trains (`pooler.dense` in HF)."""

    def __init__(self, hidden_size: int):
        super().__init__()
        self.dense = nn.Linear(hidden_size, hidden_size)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.dense(hidden[:, 0]))  # (B, T, H) -> (B, H)


class Encoder(nn.Module):
    def __init__(self, config: EncoderConfig, add_pooler: bool = True):
        super().__init__()
        self.config = config
        self.embeddings = Embeddings(config)
        self.layers = nn.ModuleList(EncoderLayer(config) for _ in range(config.num_layers))
        self.pooler = Pooler(config.hidden_size) if add_pooler else None
        self.gradient_checkpointing = False  # a training-time trade of compute for memory, see the module docstring
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(module: nn.Module, std: float = 0.02) -> None:
        """BERT's initialisation: N(0, 0.02) weights, zero biases, LayerNorm at identity."""
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=std)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)
        if isinstance(module, nn.Embedding) and module.padding_idx is not None:
            nn.init.zeros_(module.weight[module.padding_idx])
        if isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, inputs_embeds=None) -> torch.Tensor:
        """input_ids (B, T) -> last hidden states (B, T, H). attention_mask: 1 = token, 0 = padding.
        `inputs_embeds` (B, T, H) replaces the word-embedding lookup, as in `transformers`."""
        if (input_ids is None) == (inputs_embeds is None):
            raise InputError("give exactly one of input_ids and inputs_embeds")
        if token_type_ids is None:
            like = input_ids if inputs_embeds is None else inputs_embeds[..., 0]  # (B, T)
            token_type_ids = torch.zeros(like.shape, dtype=torch.long, device=like.device)
        x = self.embeddings(input_ids, token_type_ids, inputs_embeds)  # (B, T, H)
        # The mask in the dtype attention computes in (bf16/fp16 under autocast): a mask of another dtype than
        # Q sends F.scaled_dot_product_attention to its slow unfused fallback.
        dtype = torch.get_autocast_dtype(x.device.type) if torch.is_autocast_enabled(x.device.type) else x.dtype
        bias = None if attention_mask is None else padding_bias(attention_mask, dtype)  # (B, 1, 1, T)
        packing = Packing.from_mask(attention_mask) if self.config.unpad and attention_mask is not None else None
        if packing is not None:
            x = packing.pack(x)  # (N, H): the dense layers see real tokens only
        recompute = self.gradient_checkpointing and self.training and torch.is_grad_enabled()
        for layer in self.layers:
            x = checkpoint(layer, x, bias, packing, use_reentrant=False) if recompute else layer(x, bias, packing)
        return x if packing is None else packing.unpack(x)  # (B, T, H), zeros at padding

    def resize_layers(self, widths: list[tuple[int | None, int | None]]) -> Encoder:
        """Give each layer the (attention width, FFN width) of a structurally pruned checkpoint, as hf.layer_widths
        reads them: fresh Linear layers of those shapes, which loading then fills; fewer heads of the same size.
        Loading a pruned folder this way needs nothing in config.json (transformers 5 no longer prunes heads on
        load, so it cannot read such a folder)."""
        H = self.config.hidden_size
        for layer, (attention, ffn) in zip(self.layers, widths):
            a = layer.attention
            if attention is not None and attention != a.num_heads * a.head_dim:
                if attention % a.head_dim:
                    raise InputError(f"query has {attention} rows, not a whole number of heads of size {a.head_dim}")
                a.query, a.key, a.value, a.out = nn.Linear(H, attention), nn.Linear(H, attention), nn.Linear(H, attention), nn.Linear(attention, H)
                a.num_heads = a.num_kv_heads = attention // a.head_dim
            if ffn is not None and ffn != layer.ffn.up.out_features:
                layer.ffn.up, layer.ffn.down = nn.Linear(H, ffn), nn.Linear(ffn, H)
        return self

    @classmethod
    def from_pretrained(cls, path: str | Path, **config_overrides) -> Encoder:
        """Load an HF BERT folder (config.json + model.safetensors or pytorch_model.bin), strictly. A folder of
        a model with a head (BertForMaskedLM, BertForSequenceClassification) holds the encoder under `bert.`:
        that part loads, and the head is left out, as when fine-tuning starts from a pretrained checkpoint."""
        config = EncoderConfig.from_json(Path(path) / "config.json", **config_overrides)
        hf_state = hf.read_weights(path)
        if any(k.startswith("bert.") for k in hf_state):
            hf_state = {k: v for k, v in hf_state.items() if k.startswith("bert.")}
        hf.check_layer_count(hf_state, config.num_layers, path)
        with hf.shapes_only():  # the weights are checked against them before anything is allocated
            model = cls(config, add_pooler=hf.has_pooler(hf_state)).resize_layers(hf.layer_widths(hf_state, config.num_layers))
        state = hf.to_ours(hf_state, config.num_layers, model.state_dict(), path)
        model = hf.materialize(model)
        model.load_state_dict(state)
        return model

    def save_pretrained(self, path: str | Path) -> None:
        """Write config.json and model.safetensors that `transformers.BertModel.from_pretrained` loads."""
        hf.save(path, self.config.to_hf(), hf.to_hf(self.state_dict(), self.config.num_layers))
