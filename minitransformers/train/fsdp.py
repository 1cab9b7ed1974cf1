"""Fully sharded data parallelism (FSDP2): each process keeps 1/world of every parameter, gradient and optimizer state.

PyTorch's `torch.distributed.fsdp.fully_shard` (FSDP2, "per-parameter sharding": docs.pytorch.org/docs/stable/
distributed.fsdp.fully_shard.html) replaces each parameter by a DTensor sharded on dim 0 over a 1-D device mesh:

    parameter W (rows, cols)  ->  rank r holds W[r·⌈rows/world⌉ : (r+1)·⌈rows/world⌉]   (Shard(0), the last shard may be short)

Before a sharded module's forward it all-gathers its parameters, after it frees them again; in backward it
gathers again and reduce-scatters the gradients, averaged over ranks, so each rank ends with the gradient shard of
its own parameter shard, and AdamW (element-wise) updates only that shard. As in torchtitan's recipe
(torchtitan/models/llama3/infra/parallelize.py), each transformer layer (an encoder layer, a decoder block) is its
own unit, gathered one at a time, and then the root takes what is left (embeddings, final norms, heads).

Frozen parameters (the base under LoRA, adapters or BitFit) are sharded like the rest: they are float tensors, so a
shard is a slice of real numbers that the all-gather puts back exactly; they get no gradient and no optimizer state,
so only the adapters train. QLoRA is refused (`check`): its NF4 base is packed uint8 codes with per-block absmax
values, kept as buffers, which fully_shard does not shard (a dim-0 slice of packed bytes would not be a slice of the
weight the codebook describes), so every rank would hold the whole quantized base: not what --fsdp promises, and not
tested against a single process.

With --fsdp-offload the shards live in CPU memory (`CPUOffloadPolicy`): each layer's are copied to the GPU for its
compute, gradients come back to the CPU, and AdamW steps there; the GPU then holds about one layer's weights.

On CUDA with --precision bf16, a `MixedPrecisionPolicy` gathers bf16 copies of the fp32 shards for compute and
reduce-scatters gradients in fp32, the policy torchtitan uses.

Saving the best model needs the whole weights on one process: `full_model` gathers a full state dict
(`get_model_state_dict(full_state_dict=True, cpu_offload=True)`, every rank taking part, rank 0 receiving it) and
puts it into a copy of the model made before sharding with its parameters on the meta device (`meta_copy`, no
memory), so the saved folder is the one an unsharded run writes.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, OffloadPolicy, fully_shard
from torch.distributed.tensor import DTensor

from ..errors import InputError
from ..model.decoder import DecoderLayer
from ..model.encoder import EncoderLayer
from ..quant.layer import QuantizedLinear

LAYERS = (EncoderLayer, DecoderLayer)  # the units that are gathered one at a time


def check(model: nn.Module) -> None:
    """Refuse quantized layers (QLoRA's NF4 base): see the module docstring."""
    packed = [name for name, m in model.named_modules() if isinstance(m, QuantizedLinear)]
    if packed:
        raise InputError(f"--fsdp does not shard quantized layers ({len(packed)}, e.g. {packed[0]}; QLoRA's NF4 base): their packed uint8 codes are buffers, "
                         "which fully_shard leaves whole on every rank, and a row slice of packed bytes is not a slice of the weight; "
                         "use --method lora (a float base) with --fsdp, or drop --fsdp")  # fmt: skip


def shard(model: nn.Module, device: torch.device, world_size: int, precision: str, offload: bool = False) -> nn.Module:
    """fully_shard each transformer layer, then the root, on a 1-D mesh over all processes; the model in place.
    offload: the shards (parameters, gradients, so AdamW's state too) stay in CPU memory, each layer's copied to the
    device for its forward and backward (CPUOffloadPolicy; pinned memory on CUDA); on a CPU run it changes nothing."""
    check(model)
    mesh = init_device_mesh(device.type, (world_size,))
    bf16 = device.type == "cuda" and precision == "bf16"
    policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if bf16 else MixedPrecisionPolicy()
    options = {"mesh": mesh, "mp_policy": policy, "offload_policy": CPUOffloadPolicy(pin_memory=device.type == "cuda") if offload else OffloadPolicy()}
    for module in model.modules():
        if isinstance(module, LAYERS):
            fully_shard(module, **options)
    return fully_shard(model, **options)


def meta_copy(model: nn.Module) -> nn.Module:
    """A copy of `model` whose parameters are on the meta device (no memory), ties kept; buffers are copied."""
    memo = {id(p): nn.Parameter(torch.empty_like(p, device="meta"), requires_grad=p.requires_grad) for p in model.parameters()}
    return copy.deepcopy(model, memo)


def full_model(model: nn.Module, template: nn.Module, is_main: bool) -> nn.Module | None:
    """The sharded `model` gathered into a plain copy of `template` (meta_copy's) on rank 0, on CPU; None elsewhere.
    Every rank must call it: the gathering is collective."""
    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if not is_main:
        return None
    plain, made = copy.deepcopy(template), {}
    for prefix, module in plain.named_modules():
        for name, p in list(module._parameters.items()):
            if p is not None:
                key = f"{prefix}.{name}" if prefix else name
                made.setdefault(id(p), nn.Parameter(full[key], requires_grad=p.requires_grad))
                module._parameters[name] = made[id(p)]  # one Parameter per tied group, as in the model
    plain.load_state_dict(full)  # checks every key, and copies the persistent buffers
    return plain


def clip_grad_norm_(parameters, max_norm: float) -> torch.Tensor:
    """Clip the global gradient norm, as torchtitan does: the norm of DTensor shards is a partial sum on each rank,
    `full_tensor()` all-reduces it into ‖g‖ over the whole model, and every rank scales its shards by the same factor."""
    parameters = [p for p in parameters if p.grad is not None]
    norm = torch.nn.utils.get_total_norm([p.grad for p in parameters])
    if isinstance(norm, DTensor):
        norm = norm.full_tensor()
    torch.nn.utils.clip_grads_with_norm_(parameters, max_norm, norm)
    return norm
