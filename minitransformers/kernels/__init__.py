"""Triton kernels for quantized matmuls, each beside a plain-torch reference of the same function.

    int8_mm.py   W8A8: per-token activation quantization, and int8 × int8 -> int32 with a fused scaling epilogue
    int4_mm.py   W4A16: packed 4-bit weights (int4 per group, NF4 / FP4 blocks) dequantized inside the matmul

Triton is optional (it comes with the `test` extra, not with the library): without it these modules still
import, `triton` and `tl` are None, the kernels are plain functions that are never launched, and every dispatch
takes the reference. The kernels run where `triton_runs_on` says so: CUDA tensors, Triton importable.

Under the Triton interpreter (TRITON_INTERPRET=1, which runs the kernels on CPU tensors with numpy) Triton
decides when `triton.jit` decorates a function, so the variable must be set before this package is first
imported; `autotuned` then uses one small config, since the interpreter cannot time configs and is slow on
big tiles.
"""

from __future__ import annotations

import os

import torch

try:
    import triton
    import triton.language as tl
    import triton.testing
except ImportError:  # Triton is optional: the references need only torch
    triton = tl = None


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def triton_runs_on(*tensors: torch.Tensor) -> bool:
    """True when the kernels can run: Triton imports and every tensor is on a CUDA device."""
    return triton is not None and all(t.is_cuda for t in tensors)


def jit(fn):
    """triton.jit, or fn unchanged when Triton is missing (then it is never called)."""
    return fn if triton is None else triton.jit(fn)


def quick_bench(fn, quantiles):
    """Triton's do_bench over 20 ms of calls after 5 ms of warm-up, instead of its 100 and 25: a new shape is tuned
    at its first call, in every process, and the configs differ by far more than this resolves."""
    return triton.testing.do_bench(fn, warmup=5, rep=20, quantiles=quantiles)


def autotuned(configs: list[dict], interpreter_config: dict, key: list[str], **options):
    """triton.autotune(jit(fn)) over `configs`, dicts of meta-parameters plus num_warps and num_stages; under the
    interpreter, `interpreter_config` alone (no timing, small tiles that still cut the test shapes into several)."""

    def config(meta: dict):
        meta = dict(meta)
        return triton.Config(meta, num_warps=meta.pop("num_warps", 4), num_stages=meta.pop("num_stages", 2))

    def decorate(fn):
        if triton is None:
            return fn
        chosen = [interpreter_config] if interpreting() else configs
        return triton.autotune([config(c) for c in chosen], key=key, do_bench=quick_bench, **options)(triton.jit(fn))

    return decorate


@jit
def round_half_even(v):
    """torch.round for float32 v: to the nearest integer, ties to even (libdevice.rint has no interpreter version)."""
    lower = tl.floor(v)
    fraction = v - lower
    odd = (lower - 2.0 * tl.floor(lower * 0.5)) != 0.0
    return tl.where((fraction > 0.5) | ((fraction == 0.5) & odd), lower + 1.0, lower)


@jit
def grouped_tile(pid, M, N, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, GROUP_M: tl.constexpr):
    """Program id -> (tile row, tile column), GROUP_M tile rows at a time, so that programs running together share
    the same few row tiles of x and column tiles of W in the L2 cache (Triton's matmul tutorial)."""
    tiles_m, tiles_n = tl.cdiv(M, BLOCK_M), tl.cdiv(N, BLOCK_N)
    group = pid // (GROUP_M * tiles_n)
    first_m = group * GROUP_M
    rows = tl.minimum(tiles_m - first_m, GROUP_M)
    return first_m + (pid % (GROUP_M * tiles_n)) % rows, (pid % (GROUP_M * tiles_n)) // rows
