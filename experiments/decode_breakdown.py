"""Where a decode step's time goes, for experiments/decode_bench.py (CUDA only).

    linear_times     the decoder's linear layers alone, at the step's shapes: for each (in, out) shape, every layer of
                     that shape called once on a (batch, in) input, captured in one CUDA graph and replayed with the L2
                     cache flushed before each replay, so that each weight comes from memory as in a real step; the
                     median replay over the number of layers is a call's time, and the layer's bytes over it its
                     achieved bandwidth (a W4A16 call includes its zeroed fp32 buffer and the copy out of it)
    kernel_summary   one whole generate call under torch.profiler: the GPU kernels it ran (CUDA-graph replays
                     included), counted and summed, a step's share, and the share of the matmul kernels (ours W4A16,
                     cuBLAS) among them; the prefill's kernels are in the sums, about one step's worth

A step's time is at least its kernels' time; what the measured step takes beyond it is the GPU waiting between
kernels (launch gaps, the host). The kernels' time is at least the linear layers' time; what is beyond it is
attention, normalisation, rotary, the KV-cache writes and the small kernels between them.
"""

from __future__ import annotations

import statistics

import torch
from torch import nn
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile

from minitransformers.quant.layer import QuantizedLinear

REPLAYS = 20
MATMUL_NAMES = ("w4a16", "gemv", "gemm", "nvjet", "cutlass", "xmma", "splitkreduce")  # ours, then cuBLAS's kernel names


def linear_groups(model: nn.Module) -> dict[tuple[int, int], list[nn.Module]]:
    """(in, out) -> the layers of that shape a decode step multiplies by, in model order: every nn.Linear and
    quantized linear, lm_head included (a tied lm_head reads the embedding's matrix)."""
    groups: dict[tuple[int, int], list[nn.Module]] = {}
    for module in model.modules():
        if isinstance(module, (nn.Linear, QuantizedLinear)):
            groups.setdefault((module.in_features, module.out_features), []).append(module)
    return groups


def layer_bytes(module: nn.Module) -> int:
    """What a call must read of the layer: the weight (a quantized one at its real bytes, scales included) and bias."""
    if isinstance(module, QuantizedLinear):
        return module.nbytes
    return module.weight.nbytes + (0 if module.bias is None else module.bias.nbytes)


@torch.no_grad()
def linear_times(model: nn.Module, batch: int, dtype: torch.dtype, device: torch.device) -> list[dict]:
    """One row a shape: the layers a step runs, a call's time (µs), its bytes and achieved GB/s."""
    flush = torch.empty(256 * 2**20, dtype=torch.uint8, device=device)  # 256 MiB, over four times the H200's L2
    rows = []
    for (k, n), layers in linear_groups(model).items():
        x = torch.randn(batch, k, dtype=dtype, device=device)  # (B, in): a step's tokens
        for layer in layers:  # warm-up: Triton compiles and autotunes for this M here, outside the capture
            layer(x)
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            for layer in layers:
                layer(x)
        times = []
        for _ in range(REPLAYS):
            flush.zero_()
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            graph.replay()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        seconds = statistics.median(times) / len(layers)
        bytes_ = statistics.mean(layer_bytes(layer) for layer in layers)
        rows.append({"in": k, "out": n, "layers": len(layers), "us": 1e6 * seconds, "bytes": bytes_, "GBps": bytes_ / seconds / 1e9})
        del graph
    return rows


def kernel_summary(run, steps: int) -> dict:
    """Profile one call of `run`; -> GPU kernels a step, their ms a step, and the matmul kernels' ms a step."""
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        run()
        torch.cuda.synchronize()
    kernels = [e for e in prof.profiler.kineto_results.events() if e.device_type() == DeviceType.CUDA]  # the raw events: 10⁵ of them
    total = sum(e.duration_ns() for e in kernels)
    matmul = sum(e.duration_ns() for e in kernels if any(word in e.name().lower() for word in MATMUL_NAMES))
    return {"kernels_per_step": len(kernels) / steps, "kernel_ms_per_step": total / 1e6 / steps, "matmul_ms_per_step": matmul / 1e6 / steps}
