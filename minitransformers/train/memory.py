"""What one process holds for training: parameter, gradient and AdamW-state bytes, counted and predicted.

Per rank, for P float32 parameters of which T train (ZeRO paper, Rajbhandari et al. 2020, section 3: model states):

    DDP (and one process):  4P parameters + 4T gradients + 8T AdamW moments (exp_avg, exp_avg_sq)
    FSDP over W ranks:      each of the above / W, rounded to whole rows: a tensor of d0 rows is cut into W chunks
                            of ⌈d0/W⌉ rows (torch.chunk, as fully_shard's Shard(0)), the last ones shorter or empty

AdamW's step counter, one scalar a parameter, is not counted: it is the same on every rank and does not scale.
`measured` sums the local tensors that exist (a DTensor's `to_local()` shard), so it checks `analytic` and fsdp.py.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.distributed.tensor import DTensor


def local(t: torch.Tensor) -> torch.Tensor:
    return t.to_local() if isinstance(t, DTensor) else t


def measured(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, int]:
    """Bytes this process holds: parameters, gradients, AdamW moments (after a step, so they exist)."""
    nbytes = lambda t: local(t).numel() * local(t).element_size()  # noqa: E731
    moments = [v for state in optimizer.state.values() for k, v in state.items() if k in ("exp_avg", "exp_avg_sq")]
    return {
        "parameters": sum(nbytes(p) for p in model.parameters()),
        "gradients": sum(nbytes(p.grad) for p in model.parameters() if p.grad is not None),
        "optimizer": sum(nbytes(v) for v in moments),
    }


def shard_rows(rows: int, rank: int, world: int) -> int:
    """Rows of a `rows`-row tensor that `rank` holds under Shard(0): torch.chunk's ⌈rows/world⌉-row pieces."""
    size = math.ceil(rows / world)
    return max(0, min(rows, (rank + 1) * size) - rank * size)


def analytic(shapes: dict[str, tuple[torch.Size, bool]], rank: int = 0, world: int = 1, bytes_per_value: int = 4) -> dict[str, int]:
    """Bytes rank `rank` of `world` holds, from each parameter's (shape, trains?) alone; world=1 is DDP's."""
    def held(shape: torch.Size) -> int:
        return shard_rows(shape[0], rank, world) * math.prod(shape[1:]) * bytes_per_value if len(shape) else bytes_per_value
    trained = [held(shape) for shape, trains in shapes.values() if trains]
    return {"parameters": sum(held(shape) for shape, _ in shapes.values()), "gradients": sum(trained), "optimizer": 2 * sum(trained)}
