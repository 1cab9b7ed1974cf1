"""QLoRA, Dettmers et al. 2023, "QLoRA: Efficient Finetuning of Quantized LLMs".

LoRA (lora.py) over a base whose Linear weights are frozen in 4 bits. Section 3, eq. 5-6, for one layer:

    Y = X · doubleDequant(c₁, c₂, W^NF4)ᵀ + s · X L₁ L₂          s = α / r;  L₁ = Aᵀ (in × r), L₂ = Bᵀ (r × out)
    doubleDequant(c₁, c₂, W^NF4) = dequant(dequant(c₁, c₂), W^NF4) = Ŵ

- W^NF4: W flattened row-major in blocks of 64, each weight stored as a 4-bit code into the 16 NormalFloat
  values q (quant/nonuniform.py): Ŵ_i = q[code_i] · absmax of its block.
- c₂: one absmax per block of 64. Stored in float32 they cost 32 / 64 = 0.5 bit a weight.
- Double quantization (section 3): the absmax are quantized again, to 8 bits in blocks of 256 (c₁: one
  float32 scale per 256 absmax, plus their mean, subtracted first). The base then costs

      without DQ:   4 + 32/64                = 4.5   bits a weight
      with DQ:      4 + 8/64 + 32/(64 · 256) ≈ 4.127 bits a weight

  against 16 for bf16: the frozen base takes 4.127 / 16 ≈ 0.258 of a bf16 base's bytes (0.281 without DQ).
  `base_memory` counts the bytes the layers really hold: on MiniLM's 37 Linear layers outside the head
  (6 layers × 6, and the pooler unless it pools for the head), 4.127 bits a weight and 0.258 of bf16. On a
  causal LM (model/causal_lm.py) every Linear of the decoder layers, 7 per layer with the SwiGLU gate; the
  output layer tied to the embeddings (SmolLM2's) stays float and tied, as every tied weight (common.py).
- Gradients: only A and B train, yet ∂L/∂X must flow through every frozen layer to reach the LoRA
  matrices below it: ∂L/∂X = ∂L/∂Y · Ŵ (out × in). `DequantizeMatmul` computes it by dequantizing Ŵ
  again in the backward pass and saves nothing for backward, neither a float copy of Ŵ (autograd's F.linear
  over a dequantized Ŵ would keep one per layer, 4 bytes a weight, until backward) nor X (a frozen W needs
  no ∂L/∂W = ∂L/∂Yᵀ X). The forward calls `weight_only_matmul`, so a fused 4-bit CUDA kernel plugged in
  there serves QLoRA too. The paper's third memory saver, paged optimizers, is not here: a 22M-parameter
  encoder never runs out of GPU memory. Gradient checkpointing (the paper uses it) is the encoder's option
  `Encoder.gradient_checkpointing`, `finetune --gradient-checkpointing`.

Memory of a training step: frozen weights (4.127 bits a weight, here) + LoRA and head weights, their
gradients and AdamW's two moments (4 + 4 + 8 bytes each, few) + activations saved for backward (which
gradient checkpointing trades for a second forward). A bf16 LoRA base costs 2 bytes a weight instead;
full fine-tuning adds a gradient and two moments for every weight.

The paper's defaults (section 4 and appendix B.2): NF4 with double quantization, bf16 compute, LoRA on
all linear layers of the transformer blocks ("LoRA on all linear transformer block layers are required to
match full finetuning performance", section 4), r = 64, α = 16, dropout 0.1 (0.05 for 33B and 65B),
learning rate 2e-4 (1e-4 for 33B and 65B), max grad norm 0.3. Here: `targets=ALL_LINEAR`, double
quantization on, and the LoRA CLI's r = 8, α = 16 for a 22M-parameter model; the LoRA matrices stay
float32 and the matmuls run in bf16 under `finetune --precision bf16`.

Export: `merge_qlora` folds each B A into a dequantized copy of the base, W' = Ŵ + (α / r) B A in float:
a plain float model, exactly the adapted one. Re-quantizing W' to NF4 would not reproduce it: each merged
weight rounds to its nearest NF4 value again, with new block absmax, an error as large as the first
quantization's and usually much larger than the (α / r) B A it was meant to add.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..quant.qlinear import WeightOnlyLinear, weight_only_matmul
from .common import adaptable_linears, head_names, in_head, attach, base_requires_grad, detach, mark_only_trainable, refuse_stacking
from .lora import LoRAConfig, is_lora, lora_layers, unwrap_linears, wrap_linears

ALL_LINEAR = ("query", "key", "value", "out", "gate", "up", "down")  # every Linear of a layer: the encoder's six, and the decoder's SwiGLU gate


@dataclass
class QLoRAConfig(LoRAConfig):
    """`add_qlora`'s options: LoRA's, on every Linear of the layers, plus double quantization of the NF4 absmax."""

    targets: tuple[str, ...] = ALL_LINEAR
    double_quant: bool = True


class DequantizeMatmul(torch.autograd.Function):
    """y = x Ŵᵀ + b over a frozen quantized layer, whose backward dequantizes Ŵ on the fly.

    Only a reference to the layer is kept for backward (its packed buffers live in the model anyway):
    no tensor is saved, so no float (out, in) copy of Ŵ outlives the forward pass.

    Under autocast the product runs in autocast's dtype (the paper's bf16 compute dtype; `weight_only_matmul`
    casts x), and the gradient goes back to x in x's own dtype."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, bias: torch.Tensor | None, layer: WeightOnlyLinear) -> torch.Tensor:
        ctx.layer, ctx.x_dtype = layer, x.dtype
        return weight_only_matmul(x, layer)  # (…, in) -> (…, out); the CUDA kernel's seam

    @staticmethod
    def backward(ctx, grad_y: torch.Tensor):
        grad_x = grad_bias = None
        if ctx.needs_input_grad[0]:
            w = ctx.layer.dequantize().to(grad_y.dtype)  # Ŵ (out, in), freed when backward returns
            grad_x = (grad_y @ w).to(ctx.x_dtype)  # (…, out) @ (out, in) -> (…, in)
        if ctx.needs_input_grad[1]:
            grad_bias = grad_y.reshape(-1, grad_y.shape[-1]).sum(0)  # (N, out) -> (out,)
        return grad_x, grad_bias, None


class NF4Linear(WeightOnlyLinear):
    """A frozen NF4 linear layer (block 64, double quantization by default) that autograd can pass through."""

    @classmethod
    def from_linear(cls, linear: nn.Linear, double_quant: bool = True) -> NF4Linear:
        return super().from_linear(linear, "nf4", block_size=64, double_quant=double_quant).requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return DequantizeMatmul.apply(x, self.bias, self)


def add_qlora(model: nn.Module, r: int = 8, alpha: float = 16, dropout: float = 0.0, targets=ALL_LINEAR, double_quant: bool = True) -> nn.Module:
    """LoRA on the Linear layers named by `targets` (lora.wrap_linears), then every adaptable Linear (outside the
    modules to save, weight not tied; common.adaptable_linears), adapted or not, frozen in NF4. Embeddings and
    LayerNorms stay float and frozen; LoRA's A, B and the modules to save train. Returns the model."""
    refuse_stacking(model, "qlora")
    frozen = base_requires_grad(model)
    wrap_linears(model, r, alpha, dropout, targets)  # A, B in the float dtype of the weights they adapt
    for name in adaptable_linears(model):  # the plain Linears, and the `base` inside each LoRALinear
        model.set_submodule(name, NF4Linear.from_linear(model.get_submodule(name), double_quant))
    attach(model, "qlora", frozen)
    return mark_only_trainable(model, is_lora)


def remove_qlora(model: nn.Module) -> nn.Module:
    """LoRA removed: each adapted layer is its NF4Linear base again, so the model is the quantized base, bit for
    bit what `add_qlora` froze. The float weights are not restored: quantizing them was the point, and NF4 keeps
    no copy (dequantize_base gives Ŵ, not W)."""
    if merged := [n for n, m in lora_layers(model).items() if m.merged]:
        raise RuntimeError(f"LoRA layers {merged[:3]} of a QLoRA model cannot be merged into NF4; use merge_qlora for a float export")
    return detach(unwrap_linears(model, merge=False), "qlora")


@torch.no_grad()
def dequantize_base(model: nn.Module) -> nn.Module:
    """Replace, in place, every NF4Linear with a frozen float nn.Linear holding Ŵ (and the same bias)."""
    for name in [n for n, m in model.named_modules() if isinstance(m, NF4Linear)]:
        layer = model.get_submodule(name)
        linear = nn.Linear(layer.in_features, layer.out_features, bias=layer.bias is not None, device=layer.codes.device)
        linear.weight.copy_(layer.dequantize())
        if layer.bias is not None:
            linear.bias.copy_(layer.bias)
        model.set_submodule(name, linear.requires_grad_(False))
    return model


def merge_qlora(model: nn.Module) -> nn.Module:
    """Export, in place: W' = Ŵ + (α / r) B A in float for every adapted layer, Ŵ for the others, so that the
    model has its original float layout and `save_pretrained` writes an ordinary HF folder that computes
    what the QLoRA model computes. `copy.deepcopy(model)` first to keep the QLoRA model. Do not quantize
    the result to NF4 again and expect the adapted model back: see the module docstring."""
    return detach(unwrap_linears(dequantize_base(model), merge=True), "qlora")


def base_memory(model: nn.Module) -> dict:
    """The bytes of the Linear weights outside the task head (those QLoRA freezes in NF4) as the model stores
    them now, against the same weights in bf16 (2 bytes each). Biases are not counted: they stay float."""
    head = head_names(model)
    layers = [m for n, m in model.named_modules() if isinstance(m, (nn.Linear, NF4Linear)) and not in_head(n, head)]
    weights = sum(m.out_features * m.in_features for m in layers)
    stored = sum(m.weight_nbytes if isinstance(m, NF4Linear) else m.weight.nbytes for m in layers)
    return {
        "layers": len(layers), "weights": weights, "bytes": stored, "bf16_bytes": 2 * weights,
        "bits_per_weight": 8 * stored / weights, "ratio_to_bf16": stored / (2 * weights),
    }  # fmt: skip
