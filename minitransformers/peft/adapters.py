"""Bottleneck adapters: small trainable MLPs inserted into a frozen encoder.

Houlsby et al. 2019, "Parameter-Efficient Transfer Learning for NLP", section 2.1 and Figure 2;
Pfeiffer et al. 2021, "AdapterFusion: Non-Destructive Task Composition for Transfer Learning", section 3, and
Pfeiffer et al. 2020, "MAD-X", eq. 1.

An adapter projects the hidden state h ∈ R^H down to m = H / reduction_factor dimensions, applies a
nonlinearity f and projects back up; a skip connection adds h:

    a(h) = h + Δ(h),    Δ(h) = W_up f(W_down h + b_down) + b_up        W_down (m, H), W_up (H, m)

        h (…, H) ──┬──────────────────────────────────────────┐
                   └─> W_down ─> (…, m) ─> f ─> W_up ─> (…, H) ─(+)─> a(h)

Each adapter has 2·H·m + m + H parameters. Only the adapters (and, for Houlsby, the LayerNorms) and the task
head train; every pretrained weight stays frozen (`common.mark_only_trainable`).

Where they go, in our post-LN layer  x ← LN₁(x + drop(attn(x))),  x ← LN₂(x + drop(ffn(x))):

- "houlsby": two adapters per layer, one after the attention output projection and one after the FFN's
  output projection, each before the residual add and LayerNorm (Houlsby, Figure 2, right):
      x ← LN₁(x + drop(a₁(attn(x)))),   x ← LN₂(x + drop(a₂(ffn(x))))
  We wrap the two nn.Linear modules `attention.out` and `ffn.down`, so a(·) acts on their output. The authors'
  code (google-research/adapter-bert, modeling.py) applies the dropout before the adapter, a(drop(·)); here it
  comes after. In eval mode the two are the same function.
  Houlsby also trains the LayerNorm parameters ("the adapter, the layer normalization parameters, and the final
  classification layer", Figure 2 caption); the authors' code trains every LayerNorm, the embeddings' included,
  and so does `train_layernorm=True`, the default for this kind.
- "pfeiffer": one adapter per layer, after the FFN's Add & Norm, followed by the same LayerNorm again
  (MAD-X eq. 1: A(h, r) = U f(D h) + r, with h the output of the Add & Norm and r the FFN's output). With
  z = x + drop(ffn(x)), the input of LN₂:
      x ← LN₂(z + Δ(LN₂(z)))
  We wrap the LayerNorm `ffn_norm`. This is the `adapters` library's SeqBnConfig (original_ln_before,
  residual_before_ln and original_ln_after all True). The LayerNorms stay frozen by default, as there.

On the decoder (model/decoder.py), a pre-norm layer with RMSNorm,  x ← x + attn(RMSNorm₁(x)),
x ← x + ffn(RMSNorm₂(x)), Houlsby's placement is the same: a(·) on the output of `attention.out` and `ffn.down`,
before the residual add,  x ← x + a₁(attn(RMSNorm₁(x))),  x ← x + a₂(ffn(RMSNorm₂(x))),  and
`train_layernorm` trains the RMSNorm gains g (every RMSNorm, the final one included). Pfeiffer's is refused:
it re-applies the LayerNorm that follows the FFN's residual add, and a pre-norm layer has none there.

Both wrappers keep the wrapped module's `weight` and `bias` under its own name, so the base model's parameter
names do not change (a base checkpoint still loads) and every new parameter has `adapter` in its name.
The wrappers act on the last dimension only, so they work on padded (B, T, H) and packed (N, H) tokens alike.

Initialisation: near identity, as Houlsby section 2.1 asks ("if the initialization deviates too far from the
identity function, the model may fail to train"). W_down ~ N(0, 10⁻²) truncated at ±2σ (the `adapters`
library's "houlsby" init; the authors' code uses σ = 10⁻³) and W_up = 0, biases 0 (the library's "mam_adapter"
init, as LoRA zeroes B). So Δ = 0 and the adapted model computes exactly the base model's function at the start;
W_up gets a gradient at once and W_down from the second step on.

Defaults, and where they come from:
- reduction_factor 16 (H = 768 → m = 48): the default for both kinds in the `adapters` library (AdapterHub,
  by Pfeiffer et al.). Houlsby chose m ∈ {8, 64, 256} per GLUE task; the authors' code defaults to m = 64.
- non_linearity: "gelu_new" (tanh GELU) for Houlsby, the function in the authors' code (the `adapters`
  library uses "swish"); "relu" for Pfeiffer (MAD-X eq. 1; the library's SeqBnConfig).
- On BERT-base (H = 768, 12 layers) with reduction_factor 16: Houlsby adds 24 · 74,544 = 1,789,056 adapter
  parameters (1.6% of the encoder) plus 38,400 LayerNorm ones; Pfeiffer adds 12 · 74,544 = 894,528 (0.8%).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import InputError
from ..model.decoder import DecoderLayer, RMSNorm
from ..model.encoder import EncoderLayer
from .common import PEFTModule, attach, head_names, in_head, base_requires_grad, detach, mark_only_trainable, refuse_stacking

NON_LINEARITIES = {
    "relu": F.relu,
    "gelu": F.gelu,
    "gelu_new": partial(F.gelu, approximate="tanh"),
    "swish": F.silu,
}

# kind -> (default non_linearity, default train_layernorm); see the module docstring for the sources.
KINDS = {"houlsby": ("gelu_new", True), "pfeiffer": ("relu", False)}


@dataclass
class AdapterConfig:
    """`add_adapters`' options besides the kind; None takes the kind's paper setting (KINDS)."""

    reduction_factor: float = 16
    non_linearity: str | None = None
    train_layernorm: bool | None = None


class Adapter(nn.Module):
    """The bottleneck Δ(h) = W_up f(W_down h + b_down) + b_up, (…, H) -> (…, H). The wrappers below add the
    skip connection where they insert it."""

    def __init__(self, hidden_size: int, bottleneck: int, non_linearity: str, device=None, dtype=None):
        super().__init__()
        self.down = nn.Linear(hidden_size, bottleneck, device=device, dtype=dtype)  # W_down (m, H)
        self.up = nn.Linear(bottleneck, hidden_size, device=device, dtype=dtype)  # W_up (H, m)
        self.non_linearity = non_linearity
        nn.init.trunc_normal_(self.down.weight, std=1e-2, a=-2e-2, b=2e-2)
        nn.init.zeros_(self.down.bias)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, h: Tensor) -> Tensor:
        return self.up(NON_LINEARITIES[self.non_linearity](self.down(h)))  # (…, H) -> (…, m) -> (…, H)

    def extra_repr(self) -> str:
        return f"non_linearity={self.non_linearity!r}"


class AdaptedLinear(PEFTModule, nn.Module):
    """Houlsby's placement: a(W x + b) = y + Δ(y) with y = W x + b, the wrapped nn.Linear's output."""

    def __init__(self, linear: nn.Linear, adapter: Adapter):
        super().__init__()
        self.weight, self.bias = linear.weight, linear.bias  # the base's parameters, under their own names
        self.adapter = adapter

    def forward(self, x: Tensor) -> Tensor:
        y = F.linear(x, self.weight, self.bias)  # (…, H)
        return y + self.adapter(y) if self.enabled else y

    def base(self) -> nn.Linear:
        """The wrapped layer again: an nn.Linear holding the same Parameter objects."""
        out_features, in_features = self.weight.shape
        linear = nn.Linear(in_features, out_features, bias=self.bias is not None, device="meta")
        linear.weight, linear.bias = self.weight, self.bias
        return linear


class AdaptedLayerNorm(PEFTModule, nn.Module):
    """Pfeiffer's placement: LN(z + Δ(LN(z))), the adapter after the Add & Norm and the same LayerNorm again."""

    def __init__(self, norm: nn.LayerNorm, adapter: Adapter):
        super().__init__()
        self.normalized_shape, self.eps = norm.normalized_shape, norm.eps
        self.weight, self.bias = norm.weight, norm.bias  # the base's parameters, under their own names
        self.adapter = adapter

    def norm(self, z: Tensor) -> Tensor:
        return F.layer_norm(z, self.normalized_shape, self.weight, self.bias, self.eps)

    def forward(self, z: Tensor) -> Tensor:
        return self.norm(z + self.adapter(self.norm(z))) if self.enabled else self.norm(z)  # (…, H)

    def base(self) -> nn.LayerNorm:
        """The wrapped LayerNorm again, holding the same Parameter objects."""
        norm = nn.LayerNorm(self.normalized_shape, eps=self.eps, device="meta")
        norm.weight, norm.bias = self.weight, self.bias
        return norm


def add_adapters(
    model: nn.Module,
    kind: str = "houlsby",
    reduction_factor: float = 16,
    non_linearity: str | None = None,
    train_layernorm: bool | None = None,
) -> nn.Module:
    """Insert bottleneck adapters into every layer of `model` (an Encoder or a Decoder, or a model holding one),
    in place, and freeze all but the adapters, the task head and, with `train_layernorm`, every LayerNorm (every
    RMSNorm, on the decoder). On the decoder only "houlsby" applies: "pfeiffer" is refused (module docstring).

    kind: "houlsby" (two adapters per layer) or "pfeiffer" (one, after the FFN). The bottleneck has
    hidden_size // reduction_factor dimensions. `non_linearity` (one of NON_LINEARITIES) and `train_layernorm`
    default to the kind's paper setting: "gelu_new" and True for Houlsby, "relu" and False for Pfeiffer.
    Returns the model.
    """
    if kind not in KINDS:
        raise InputError(f"unknown adapter kind {kind!r}; use 'houlsby' (two adapters per layer) or 'pfeiffer' (one, after the FFN)")
    default_non_linearity, default_train_layernorm = KINDS[kind]
    non_linearity = default_non_linearity if non_linearity is None else non_linearity
    train_layernorm = default_train_layernorm if train_layernorm is None else train_layernorm
    if non_linearity not in NON_LINEARITIES:
        raise InputError(f"unknown non_linearity {non_linearity!r}; use one of {sorted(NON_LINEARITIES)}")
    refuse_stacking(model, "adapters")
    layers = [m for m in model.modules() if isinstance(m, (EncoderLayer, DecoderLayer))]
    if not layers:
        raise InputError(f"{type(model).__name__} has no EncoderLayer or DecoderLayer; add_adapters patches a minitransformers Encoder or Decoder")
    if kind == "pfeiffer" and isinstance(layers[0], DecoderLayer):
        raise InputError(f"{type(model).__name__} has pre-norm DecoderLayers (RMSNorm before each block): pfeiffer adapters re-apply the "
                         "LayerNorm after the FFN's residual add, which these layers do not have; use kind='houlsby'")
    H = layers[0].ffn.down.out_features
    if reduction_factor <= 0 or H // reduction_factor < 1:
        raise InputError(
            f"reduction_factor {reduction_factor} leaves no bottleneck for hidden size {H} "
            f"(hidden_size // reduction_factor must be at least 1); use a reduction_factor between 1 and {H}"
        )
    bottleneck = int(H // reduction_factor)

    frozen = base_requires_grad(model)

    def adapter_like(module: nn.Module) -> Adapter:
        return Adapter(H, bottleneck, non_linearity, device=module.weight.device, dtype=module.weight.dtype)

    for layer in layers:
        if kind == "houlsby":
            layer.attention.out = AdaptedLinear(layer.attention.out, adapter_like(layer.attention.out))
            layer.ffn.down = AdaptedLinear(layer.ffn.down, adapter_like(layer.ffn.down))
        else:
            layer.ffn_norm = AdaptedLayerNorm(layer.ffn_norm, adapter_like(layer.ffn_norm))

    norms = {
        f"{name}.{p}"
        for name, module in model.named_modules()
        if isinstance(module, (nn.LayerNorm, RMSNorm, AdaptedLayerNorm))
        for p in ("weight", "bias")
    }
    layernorms = {n: p for n, p in model.named_parameters() if n in norms and not in_head(n, head_names(model))} if train_layernorm else None
    attach(model, "adapters", frozen, in_place=layernorms)  # LayerNorms train in place: keep their pretrained values
    return mark_only_trainable(model, lambda name: "adapter" in name or (train_layernorm and name in norms))


def remove_adapters(model: nn.Module) -> nn.Module:
    """The base model back: each wrapper replaced by the nn.Linear or nn.LayerNorm it wraps, the same Parameters.
    The adapters define no merge: Δ is nonlinear, so it cannot be folded into W (Houlsby keeps them at inference)."""
    for name in [n for n, m in model.named_modules() if isinstance(m, (AdaptedLinear, AdaptedLayerNorm))]:
        model.set_submodule(name, model.get_submodule(name).base())
    return detach(model, "adapters")
