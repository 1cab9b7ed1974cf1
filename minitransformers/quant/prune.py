"""Pruning: zero the weights that matter least (unstructured, N:M), or cut whole heads and FFN neurons out.

Magnitude pruning, Han et al. 2015, "Learning both Weights and Connections for Efficient Neural Networks":
a weight whose magnitude is small contributes little, so it is set to zero and stays zero while the rest
retrain (train, prune, retrain, repeat; they set a layer's threshold as a quality parameter times the standard
deviation of its weights). Here the threshold comes from a sparsity s instead: in each weight matrix ("layer"
scope), or over all chosen matrices at once ("global" scope: one threshold, so layers differ in sparsity),

    m = 0 at the k smallest |w|, 1 elsewhere,   k = round(s · n),   threshold τ = the k-th smallest |w|

with Python's round (half to even, as torch.nn.utils.prune counts) and ties at τ broken by position, so that
exactly k weights fall: a 30%-sparse model has round(0.3 · n) zeros, never more because of equal magnitudes.

Gradual pruning, Zhu & Gupta 2017, "To prune, or not to prune", eq. 1: the sparsity rises from s_i (usually 0)
to s_f over n pruning steps Δt apart, starting at step t_0, fast at first and slowly at the end,

    s_t = s_f + (s_i − s_f) (1 − (t − t_0) / (n Δt))³,    t ∈ {t_0, t_0 + Δt, …, t_0 + n Δt}

and at each of those steps the masks are recomputed from the current magnitudes (`GradualPruner`).

Semi-structured N:M sparsity, Mishra et al. 2021, "Accelerating Sparse Deep Neural Networks": in every group
of M = 4 consecutive weights along the input (reduction) dimension at most N = 2 are nonzero. NVIDIA Ampere's
sparse tensor cores store such a matrix at half size plus 2-bit indices and multiply it at twice the dense rate
(torch.sparse.to_sparse_semi_structured does that on a GPU). Their recipe: train dense, keep the 2 largest of
every 4, retrain with the mask fixed.

Masks during training. `apply_masks` re-expresses each pruned weight as w ⊙ m with
torch.nn.utils.parametrize: the model's weight is computed from the stored w on every forward, so whatever
AdamW does to w (its moments, its weight decay), the masked entries of w ⊙ m are 0 · w = 0. `remove_masks`
bakes w ⊙ m into a plain weight again, as the model is saved.

Structured pruning removes rows and columns, so the model really gets smaller and faster. Attention, with the
head outputs y_h (T, d) and the output projection W_O split into per-head column blocks W_O,h (H, d):

    MultiHead(X) = Σ_h ξ_h · y_h W_O,hᵀ + b_O,    ξ_h = 1

Removing head h drops W_Q, W_K, W_V's rows h·d … (h+1)·d − 1 (and their biases) and W_O,h: exactly the model
with ξ_h = 0, i.e. with W_O,h zeroed. From a layer of width H, h heads of size d take 3(H·h·d + h·d) + H·h·d
parameters with them. An FFN neuron i is row i of W_1 (and b_1[i]) and column i of W_2: 2H + 1 parameters.

Which heads: Michel, Levy & Neubig 2019, "Are Sixteen Heads Really Better than One?", section 4.1, score a head
by the loss's sensitivity to its gate, I_h = E_x |∂L(x)/∂ξ_h|, a first-order Taylor estimate of what removing it
costs; they prune a fraction of heads at a time, re-scoring in between. Without data, the score here is the L2
norm of W_O,h: a head whose output projection is small adds little. FFN neurons get the same two scores, with a
gate on each neuron's activation, or ‖W_1[i, :]‖ · ‖W_2[:, i]‖. Structured pruning here takes the same fraction
from every layer (Michel et al. rank all heads together, after normalising the scores by layer). A pruned model
saves with `save_pretrained` (or `save_quantized`) as it is, narrower tensors under the same names, and loads back
from those shapes (`Encoder.resize_layers`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import NamedTuple

import torch
from torch import nn
from torch.nn.utils import parametrize

from ..errors import InputError
from ..model.encoder import EncoderLayer

SKIP = ("classifier",)  # the task head: new for the task, small, and the last thing to prune
LossFn = Callable[[nn.Module, object], torch.Tensor]  # (model, batch) -> scalar loss


# --- unstructured: magnitude and N:M masks -------------------------------------------------------------------------


def skipped(name: str, skip: Iterable[str]) -> bool:
    """Does a dotted name contain one of `skip` as whole parts ("classifier", "encoder.pooler", "query")?"""
    return any(f".{s}." in f".{name}." for s in skip)


def prunable_weights(model_or_weights: nn.Module | dict[str, torch.Tensor], skip=SKIP) -> dict[str, torch.Tensor]:
    """Every nn.Linear weight by parameter name ("encoder.layers.0.attention.query.weight"), those in `skip` left out."""
    if isinstance(model_or_weights, nn.Module):
        named = {f"{n}.weight": m.weight for n, m in model_or_weights.named_modules() if isinstance(m, nn.Linear)}
    else:
        named = dict(model_or_weights)
    weights = {n: w.detach() for n, w in named.items() if not skipped(n, skip)}
    if not weights:
        raise InputError(f"no weights left to prune: all of {list(named)[:4]}… are skipped by {tuple(skip)}")
    return weights


def keep_largest(scores: torch.Tensor, sparsity: float) -> torch.Tensor:
    """A bool mask of `scores`' shape: False at the round(sparsity · n) smallest, ties broken by position."""
    if not 0.0 <= sparsity <= 1.0:
        raise InputError(f"sparsity must lie in [0, 1], got {sparsity}")
    flat = scores.flatten()  # (n,)
    keep = torch.ones_like(flat, dtype=torch.bool)
    keep[flat.argsort(stable=True)[: round(sparsity * flat.numel())]] = False
    return keep.view_as(scores)


def magnitude_masks(model_or_weights, sparsity: float, scope: str = "layer", skip=SKIP) -> dict[str, torch.Tensor]:
    """Han et al.'s masks, True = keep: per weight matrix ("layer") or one threshold over all of them ("global")."""
    weights = prunable_weights(model_or_weights, skip)
    if scope == "layer":
        return {name: keep_largest(w.abs(), sparsity) for name, w in weights.items()}
    if scope == "global":
        magnitudes = torch.cat([w.abs().flatten().float() for w in weights.values()])  # (N,) all weights in one row
        keep = keep_largest(magnitudes, sparsity).split([w.numel() for w in weights.values()])
        return {name: k.view_as(w) for (name, w), k in zip(weights.items(), keep)}
    raise InputError(f"unknown scope {scope!r}; use 'layer' (a threshold per matrix) or 'global' (one for all)")


def nm_mask(w: torch.Tensor, n: int = 2, m: int = 4) -> torch.Tensor:
    """Mishra et al.'s N:M mask of a weight (out, in): the n largest |w| of every m consecutive inputs."""
    if not 0 < n <= m:
        raise InputError(f"N:M sparsity needs 0 < n <= m, got n={n}, m={m}")
    if w.dim() != 2 or w.shape[1] % m:
        raise InputError(
            f"weight of shape {tuple(w.shape)}: in_features is not a multiple of m={m}; "
            "groups of m run along the input dimension, so pad it or skip this layer"
        )
    out_features, in_features = w.shape
    groups = w.detach().abs().reshape(out_features, in_features // m, m)  # (out, in/m, m)
    top = groups.topk(n, dim=-1).indices  # (out, in/m, n)
    return torch.zeros_like(groups, dtype=torch.bool).scatter_(-1, top, True).view(out_features, in_features)


def nm_masks(model_or_weights, n: int = 2, m: int = 4, skip=SKIP) -> dict[str, torch.Tensor]:
    """`nm_mask` for every chosen weight; skip the layers whose in_features is not a multiple of m."""
    return {name: nm_mask(w, n, m) for name, w in prunable_weights(model_or_weights, skip).items()}


# --- masks that hold during fine-tuning ----------------------------------------------------------------------------


class Mask(nn.Module):
    """The parametrization w -> w ⊙ m: the module's `weight` is recomputed from the stored w on every access."""

    def __init__(self, mask: torch.Tensor):
        super().__init__()
        self.register_buffer("mask", mask)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return w * self.mask


def mask_of(module: nn.Module) -> Mask | None:
    if not parametrize.is_parametrized(module, "weight"):
        return None
    return next((p for p in module.parametrizations.weight if isinstance(p, Mask)), None)


def apply_masks(model: nn.Module, masks: dict[str, torch.Tensor]) -> nn.Module:
    """Make each named weight w ⊙ m (a new mask replaces an old one). The stored w stays the same Parameter, so an
    optimizer made before keeps working; its gradient at masked entries is 0. Returns the model."""
    modules = dict(model.named_modules())
    for name, mask in masks.items():
        module_name, _, tensor = name.rpartition(".")
        if tensor != "weight" or module_name not in modules:
            raise KeyError(f"mask {name!r} names no module weight of this model; take the masks from magnitude_masks(model, …)")
        module = modules[module_name]
        if mask.shape != module.weight.shape:
            raise InputError(f"mask for {name} has shape {tuple(mask.shape)}, the weight {tuple(module.weight.shape)}")
        mask = mask.to(device=module.weight.device, dtype=torch.bool)
        if (old := mask_of(module)) is not None:
            old.mask.copy_(mask)
        else:
            parametrize.register_parametrization(module, "weight", Mask(mask))
    return model


def remove_masks(model: nn.Module) -> nn.Module:
    """Bake every mask in: weight <- w ⊙ m, a plain Parameter again (the same object the optimizer holds)."""
    for module in [m for m in model.modules() if mask_of(m) is not None]:
        parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)
    return model


# --- the gradual schedule -------------------------------------------------------------------------------------------


def cubic_sparsity(step: int, initial: float, final: float, start: int, end: int) -> float:
    """Zhu & Gupta's eq. 1 with t_0 = start and t_0 + nΔt = end; `initial` before start, `final` after end."""
    if end <= start:
        raise InputError(f"the schedule needs start < end, got start={start}, end={end}")
    t = min(max(step, start), end)
    return final + (initial - final) * (1 - (t - start) / (end - start)) ** 3


class GradualPruner:
    """Every `every` steps from `start` to `end`, magnitude masks at sparsity s_t (eq. 1) replace the old ones.
    Call `step(t)` after optimizer step t; it returns the sparsity it set, or None between pruning steps."""

    def __init__(self, model: nn.Module, final: float, start: int, end: int, every: int, initial: float = 0.0, scope: str = "layer", skip=SKIP):
        if every < 1 or (end - start) % every:
            raise InputError(f"end - start = {end - start} must be a positive multiple of every = {every} (n Δt in the paper)")
        self.model, self.final, self.initial, self.start, self.end, self.every = model, final, initial, start, end, every
        self.scope, self.skip = scope, skip

    def step(self, t: int) -> float | None:
        if t < self.start or t > self.end or (t - self.start) % self.every:
            return None
        sparsity = cubic_sparsity(t, self.initial, self.final, self.start, self.end)
        apply_masks(self.model, magnitude_masks(self.model, sparsity, self.scope, self.skip))
        return sparsity


# --- structured: scores, then cutting heads and neurons out -----------------------------------------------------------


def encoder_layers(model: nn.Module) -> list[EncoderLayer]:
    layers = [m for m in model.modules() if isinstance(m, EncoderLayer)]
    if not layers:
        raise InputError(f"{type(model).__name__} holds no EncoderLayer; structured pruning works on our BERT (model/encoder.py)")
    return layers


def gate_gradients(model: nn.Module, linears: list[nn.Linear], groups: list[int], loss_fn: LossFn, batches) -> list[torch.Tensor]:
    """E over batches of |∂L/∂ξ| for gates ξ = 1 on each linear's input, one gate per `group` consecutive inputs."""
    gates = [  # ξ = 1, one per group: (in / group,) each
        torch.ones(lin.in_features // g, dtype=lin.weight.dtype, device=lin.weight.device, requires_grad=True)
        for lin, g in zip(linears, groups)
    ]

    def gated(gate, group):
        return lambda module, args: (args[0] * gate.repeat_interleave(group),)  # (…, in): each group times its ξ

    hooks = [lin.register_forward_pre_hook(gated(gate, g)) for lin, gate, g in zip(linears, gates, groups)]
    total, count = [torch.zeros_like(gate) for gate in gates], 0
    try:
        for batch in batches:
            grads = torch.autograd.grad(loss_fn(model, batch), gates)  # the parameters' .grad stay untouched
            total = [t + g.abs() for t, g in zip(total, grads)]
            count += 1
    finally:
        for hook in hooks:
            hook.remove()
    if count == 0:
        raise InputError("batches is empty; give at least one batch to score on")
    return [t.detach() / count for t in total]


def check_scoring_inputs(loss_fn, batches) -> bool:
    """True when the scores come from gradients: loss_fn and batches come together or not at all."""
    if (loss_fn is None) != (batches is None):
        raise InputError("give both loss_fn(model, batch) and batches for gradient scores, or neither for weight-norm scores")
    return loss_fn is not None


def head_importance(model: nn.Module, loss_fn: LossFn | None = None, batches=None) -> list[torch.Tensor]:
    """One score per head, a (num_heads,) tensor per layer: E|∂L/∂ξ_h| over `batches`, else ‖W_O,h‖₂.
    Score in eval() mode, so that dropout does not blur the gradient scores."""
    attentions = [layer.attention for layer in encoder_layers(model)]
    if check_scoring_inputs(loss_fn, batches):
        return gate_gradients(model, [a.out for a in attentions], [a.head_dim for a in attentions], loss_fn, batches)
    scores = []
    for a in attentions:
        W_O = a.out.weight.detach().view(a.out.out_features, a.num_heads, a.head_dim)  # (H, nh, hd)
        scores.append(W_O.norm(dim=(0, 2)))  # (nh,)
    return scores


def neuron_importance(model: nn.Module, loss_fn: LossFn | None = None, batches=None) -> list[torch.Tensor]:
    """One score per FFN neuron, an (intermediate,) tensor per layer: E|∂L/∂ξ_i|, else ‖W_1[i, :]‖ · ‖W_2[:, i]‖."""
    ffns = [layer.ffn for layer in encoder_layers(model)]
    if check_scoring_inputs(loss_fn, batches):
        return gate_gradients(model, [f.down for f in ffns], [1] * len(ffns), loss_fn, batches)
    return [f.up.weight.detach().norm(dim=1) * f.down.weight.detach().norm(dim=0) for f in ffns]  # (I,)


def kept(count: int, drop: Iterable[int], what: str) -> torch.Tensor:
    """The indices in range(count) not in `drop`: at least one must stay."""
    drop = set(drop)
    if bad := sorted(i for i in drop if not 0 <= i < count):
        raise IndexError(f"{what}: indices {bad} are out of range; there are {count}")
    if len(drop) == count:
        raise InputError(f"{what}: pruning all {count} would leave none; keep at least one")
    return torch.tensor([i for i in range(count) if i not in drop], dtype=torch.long)


def keep_slice(linear: nn.Module, index: torch.Tensor, dim: int, name: str) -> None:
    """Shrink an nn.Linear in place to the outputs (dim=0: rows of W, entries of b) or inputs (dim=1: columns) in `index`."""
    if type(linear) is not nn.Linear:
        raise TypeError(f"{name} is a {type(linear).__name__}, not a plain nn.Linear; remove_masks / merge_lora before structured pruning")
    index = index.to(linear.weight.device)
    linear.weight = nn.Parameter(linear.weight.detach().index_select(dim, index), requires_grad=linear.weight.requires_grad)
    if dim == 0 and linear.bias is not None:
        linear.bias = nn.Parameter(linear.bias.detach()[index], requires_grad=linear.bias.requires_grad)
    linear.out_features, linear.in_features = linear.weight.shape


def layer_at(layers: list[EncoderLayer], index: int) -> EncoderLayer:
    if not 0 <= index < len(layers):
        raise IndexError(f"layer {index} does not exist; the model has layers 0 … {len(layers) - 1}")
    return layers[index]


def prune_heads(model: nn.Module, heads_to_prune: dict[int, list[int]]) -> nn.Module:
    """Remove heads, {layer: [head, …]} numbered as the layer has them now: Q, K, V rows and W_O columns go, and the
    layer's head count drops. Make the optimizer afterwards: the sliced weights are new Parameters."""
    layers = encoder_layers(model)
    for index, heads in heads_to_prune.items():
        a = layer_at(layers, index).attention
        keep = kept(a.num_heads, heads, f"layer {index} heads")
        dims = torch.arange(a.num_heads * a.head_dim).view(a.num_heads, a.head_dim)[keep].flatten()  # (kept · hd,)
        for name in ("query", "key", "value"):
            keep_slice(getattr(a, name), dims, 0, f"layer {index} {name}")
        keep_slice(a.out, dims, 1, f"layer {index} out")
        a.num_heads = len(keep)
    return model


def prune_ffn_neurons(model: nn.Module, neurons: dict[int, list[int]]) -> nn.Module:
    """Remove FFN neurons, {layer: [neuron, …]}: rows of W_1 and b_1, columns of W_2."""
    layers = encoder_layers(model)
    for index, drop in neurons.items():
        ffn = layer_at(layers, index).ffn
        keep = kept(ffn.up.out_features, drop, f"layer {index} FFN neurons")
        keep_slice(ffn.up, keep, 0, f"layer {index} ffn.up")
        keep_slice(ffn.down, keep, 1, f"layer {index} ffn.down")
    return model


def lowest(scores: list[torch.Tensor], fraction: float) -> dict[int, list[int]]:
    """{layer: the round(fraction · count) lowest-scored indices}, ties broken by position."""
    return {i: sorted((~keep_largest(s, fraction)).nonzero().flatten().tolist()) for i, s in enumerate(scores)}


def prune_structured(model: nn.Module, head_fraction: float = 0.0, neuron_fraction: float = 0.0, loss_fn: LossFn | None = None, batches=None):
    """Score, then remove the lowest `head_fraction` of heads and `neuron_fraction` of FFN neurons of every layer.
    Returns what it removed, ({layer: heads}, {layer: neurons})."""
    batches = None if batches is None else list(batches)  # read twice: once per score
    heads = lowest(head_importance(model, loss_fn, batches), head_fraction)
    neurons = lowest(neuron_importance(model, loss_fn, batches), neuron_fraction)
    prune_heads(model, heads)
    prune_ffn_neurons(model, neurons)
    return heads, neurons


# --- the report -----------------------------------------------------------------------------------------------------


class SparsityRow(NamedTuple):
    name: str
    shape: tuple[int, ...]
    zeros: int
    total: int
    sparsity: float


@torch.no_grad()
def sparsity_report(model: nn.Module) -> list[SparsityRow]:
    """Zeros in every nn.Linear weight as the model computes with it (masks applied)."""
    rows = []
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            w = module.weight
            zeros = int((w == 0).sum())
            rows.append(SparsityRow(f"{name}.weight", tuple(w.shape), zeros, w.numel(), zeros / w.numel()))
    return rows


def sparsity_table(model: nn.Module) -> str:
    """The report as a markdown table, with the total over all rows on the last line."""
    rows = sparsity_report(model)
    zeros, total = sum(r.zeros for r in rows), sum(r.total for r in rows)
    lines = ["| weight | shape | zeros | total | sparsity |", "|---|---|--:|--:|--:|"]
    lines += [f"| {r.name} | {'×'.join(map(str, r.shape))} | {r.zeros} | {r.total} | {100 * r.sparsity:.2f}% |" for r in rows]
    lines.append(f"| total | | {zeros} | {total} | {100 * zeros / max(total, 1):.2f}% |")
    return "\n".join(lines)
