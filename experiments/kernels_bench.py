"""The Triton kernels of minitransformers/kernels against cuBLAS and the libraries, on one CUDA GPU.

One process, the same inputs for every contender. Each call follows a 256 MB write that flushes the L2 cache (an
8192² int4 weight, 34 MB, would otherwise stay in the 50 MB L2 of an H100 or H200 between calls); the activations
rotate over several buffers. "ms" is the GPU time of a call, from CUDA-graph replays of many calls with no launch gaps (the
flushes' own time subtracted); "eager ms" is one call launched from Python between CUDA events, the median over
the calls, which also counts launch time when launching takes longer than the flush before it (see `Timer`).

- W4A16, M = 1 … 64 tokens, K = N = 8192 and BERT-base's FFN shapes (768 -> 3072, 3072 -> 768): bf16 F.linear
  (cuBLAS), our int4 per group (G = 128) and NF4 (B = 64, plain and double-quantized), bitsandbytes Linear4bit
  (NF4) and Linear8bitLt, torchao int4 weight-only (G = 128), the last three only if they import. At M = 1 also
  our split-K tl.dot kernel (what M = 2 … 16 use), beside the GEMV that M = 1 uses.
- W8A8, M = N = K = 8192 and BERT-base shapes at 4096 tokens: bf16 F.linear, our two kernels (the whole layer:
  per-token quantization, then the fused GEMM; and the fused GEMM alone, on codes quantized beforehand),
  torch._int_mm followed by the scaling in separate torch ops, bitsandbytes Linear8bitLt.

GB/s counts the bytes a call must move at least (weight as stored, x, y); TOPS counts 2 M N K operations. The
report names the GPU it ran on and, for the GPUs in `PEAKS`, NVIDIA's published dense peaks (H100 SXM: 3.35 TB/s,
989 bf16 TFLOPS, 1 979 int8 TOPS; H200 SXM: the same compute, 4.8 TB/s); other GPUs get none.

    python experiments/kernels_bench.py                  # everything
    python experiments/kernels_bench.py --only w4a16     # or w8a8

Writes experiments/results/kernels_bench.md and kernels_bench.json and prints the tables.
"""

from __future__ import annotations

import argparse
import json
import statistics
import traceback
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

RESULTS = Path(__file__).resolve().parent / "results"
PEAKS = {  # torch.cuda.get_device_name() -> NVIDIA's dense (no sparsity) peaks for the SXM boards
    "NVIDIA H100 80GB HBM3": {"GPU": "H100 SXM", "GB/s": 3350.0, "bf16 TFLOPS": 989.0, "int8 TOPS": 1979.0},
    "NVIDIA H200": {"GPU": "H200 SXM", "GB/s": 4800.0, "bf16 TFLOPS": 989.0, "int8 TOPS": 1979.0},
}
W4A16_SHAPES = [(8192, 8192), (768, 3072), (3072, 768)]  # (K in, N out)
W4A16_M = [1, 2, 4, 8, 16, 32, 64]
W8A8_SHAPES = [(8192, 8192, 8192), (4096, 768, 3072), (4096, 3072, 768), (4096, 768, 768)]  # (M, K, N)


class Timer:
    """Two medians of fn(x), x rotating over `inputs`, the L2 flushed before each call:

    - `eager_ms`: each call alone between CUDA events, launched from Python. When the CPU takes longer to launch
      a call than the GPU takes to run the flush before it, the GPU waits, and the wait is counted: small
      calls through Python wrappers and Triton's launcher measure their launch cost here.
    - `graph_ms`: `repeats` calls (each after its flush) captured in one CUDA graph and replayed, minus the same
      graph of flushes alone, divided by `repeats`: the GPU time of a call, with no launch gaps (METHOD.md)."""

    def __init__(self, warmup: int, repeats: int):
        self.warmup, self.repeats = warmup, repeats
        self.flush = torch.empty(256 * 2**20, dtype=torch.uint8, device="cuda")

    def eager_ms(self, fn, inputs: list[torch.Tensor]) -> float:
        for i in range(self.warmup):
            fn(inputs[i % len(inputs)])
        times = []
        for i in range(self.repeats):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            self.flush.zero_()
            start.record()
            fn(inputs[i % len(inputs)])
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        return statistics.median(times)

    def graph_ms(self, fn, inputs: list[torch.Tensor], replays: int = 5) -> float:
        """After eager_ms has warmed fn up (compiled, autotuned)."""

        def calls(with_fn: bool):
            for i in range(self.repeats):
                self.flush.zero_()
                if with_fn:
                    fn(inputs[i % len(inputs)])

        def replay_ms(graph: torch.cuda.CUDAGraph) -> float:
            times = []
            for _ in range(replays):
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                graph.replay()
                end.record()
                end.synchronize()
                times.append(start.elapsed_time(end))
            return statistics.median(times)

        graphs = []
        for with_fn in (True, False):
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                calls(with_fn)
            graphs.append(graph)
        return (replay_ms(graphs[0]) - replay_ms(graphs[1])) / self.repeats


def gaussian_linear(K: int, N: int) -> nn.Linear:
    linear = nn.Linear(K, N, bias=False, device="cuda")
    nn.init.normal_(linear.weight, std=0.02)
    return linear


# --- contenders: name -> (fn(x), bytes of the weight as stored), or an exception's message --------------------------


def w4a16_contenders(linear: nn.Linear) -> dict:
    from minitransformers.kernels.int4_mm import w4a16_linear_triton
    from minitransformers.quant.qlinear import WeightOnlyLinear

    w_bf16 = linear.weight.to(torch.bfloat16)
    found = {"bf16 F.linear": (lambda x: F.linear(x, w_bf16), w_bf16.nbytes)}
    for name, method, options in [
        ("ours int4 G=128", "int4", {"group_size": 128}),
        ("ours NF4", "nf4", {}),
        ("ours NF4 double-quant", "nf4", {"double_quant": True}),
    ]:
        q = WeightOnlyLinear.from_linear(linear, method, **options)
        w = q.packed_4bit()  # the kernels' view of the layer's buffers
        found[name] = (lambda x, w=w: w4a16_linear_triton(x, w, None), q.weight_nbytes)
        if "double" not in name:  # at M = 1 only: the GEMV against the split-K tl.dot kernel that M = 2 … 16 use
            found[f"{name}, split-K tl.dot"] = (lambda x, w=w: w4a16_linear_triton(x, w, None, kernel="splitk"), q.weight_nbytes)
    found |= library_contenders(linear, ["bitsandbytes NF4", "bitsandbytes int8", "torchao int4 G=128"])
    return found


def w8a8_contenders(linear: nn.Linear) -> dict:
    from minitransformers.kernels.int8_mm import quantize_rows_reference, w8a8_linear_triton, w8a8_matmul_triton
    from minitransformers.quant.qlinear import W8A8Linear

    q = W8A8Linear.from_linear(linear)
    w_bf16, codes_t = linear.weight.to(torch.bfloat16), q.codes.t()  # codes_t (K, N), column-major as cuBLASLt wants
    quantized = {}  # x -> its codes and scales, made outside the timed call for the "GEMM only" rows

    def int_mm_then_scale(x):
        xq, sx = quantized[x]
        return (torch._int_mm(xq, codes_t).float() * sx * q.scale.t()).to(x.dtype)

    def fused_gemm(x):
        xq, sx = quantized[x]
        return w8a8_matmul_triton(xq, sx, q.codes, q.scale, None, x.dtype)

    found = {
        "bf16 F.linear": (lambda x: F.linear(x, w_bf16), w_bf16.nbytes),
        "ours W8A8 layer (quantize + fused GEMM)": (lambda x: w8a8_linear_triton(x, q.codes, q.scale, None), q.weight_nbytes),
        "ours fused GEMM only": (fused_gemm, q.weight_nbytes),
        "torch._int_mm + separate scaling, GEMM only": (int_mm_then_scale, q.weight_nbytes),
    }  # fmt: skip
    found |= library_contenders(linear, ["bitsandbytes int8"])
    return found, lambda x: quantized.setdefault(x, quantize_rows_reference(x))


def library_contenders(linear: nn.Linear, names: list[str]) -> dict:
    """The library layers that import and build here; the others map to the reason they did not. bitsandbytes'
    Linear8bitLt cannot be captured in a CUDA graph (a failed capture leaves torch's generator broken for the rest
    of the process), so its row is timed eagerly and says so."""
    makers = {"bitsandbytes NF4": bnb_nf4, "bitsandbytes int8": bnb_int8, "torchao int4 G=128": torchao_int4}
    found = {}
    for name in names:
        try:
            layer = makers[name](linear)
            row = f"{name} (eager timer: not capturable)" if name == "bitsandbytes int8" else name
            found[row] = (lambda x, layer=layer: layer(x), weight_bytes(layer))
        except Exception as error:  # an absent or broken library is a row of the table, not a crash
            found[name] = f"{type(error).__name__}: {error}".splitlines()[0][:200]
    return found


def weight_bytes(layer: nn.Module) -> int:
    return sum(t.nbytes for t in [*layer.parameters(), *layer.buffers()])


def bnb_nf4(linear: nn.Linear) -> nn.Module:
    import bitsandbytes as bnb

    layer = bnb.nn.Linear4bit(linear.in_features, linear.out_features, bias=False, compute_dtype=torch.bfloat16, quant_type="nf4")
    layer.weight = bnb.nn.Params4bit(linear.weight.detach().cpu().to(torch.bfloat16), requires_grad=False, quant_type="nf4")
    return layer.cuda()  # quantizes on the move, double quantization on (bitsandbytes' default)


def bnb_int8(linear: nn.Linear) -> nn.Module:
    import bitsandbytes as bnb

    layer = bnb.nn.Linear8bitLt(linear.in_features, linear.out_features, bias=False, has_fp16_weights=False, threshold=6.0)
    layer.weight = bnb.nn.Int8Params(linear.weight.detach().cpu().to(torch.float16), requires_grad=False, has_fp16_weights=False)
    return layer.cuda()


def torchao_int4(linear: nn.Linear) -> nn.Module:
    from torchao.quantization import Int4WeightOnlyConfig, quantize_

    model = nn.Sequential(nn.Linear(linear.in_features, linear.out_features, bias=False)).to("cuda", torch.bfloat16)
    model[0].weight.data.copy_(linear.weight)
    # "tile_packed_to_4d": torch's own tinygemm kernel (aten._weight_int4pack_mm); the default "plain" format
    # needs the separate mslk package
    quantize_(model, Int4WeightOnlyConfig(group_size=128, int4_packing_format="tile_packed_to_4d"))
    return model


# --- the runs ------------------------------------------------------------------------------------------------------


def run(timer: Timer, M: int, K: int, N: int, contenders: dict, prepare, buffers: int) -> list[dict]:
    inputs = [torch.randn(M, K, device="cuda", dtype=torch.bfloat16) for _ in range(buffers)]
    for x in inputs:
        prepare(x)
    rows = []
    for name, contender in contenders.items():
        row = {"M": M, "K": K, "N": N, "kernel": name}
        if isinstance(contender, str):
            rows.append(row | {"error": contender})
            continue
        fn, nbytes = contender
        try:
            row["eager ms"] = timer.eager_ms(fn, inputs)
            ms = row["eager ms"] if "not capturable" in name else timer.graph_ms(fn, inputs)
        except Exception:  # a library layer that cannot be captured in a graph keeps its eager time
            rows.append(row | {"error": traceback.format_exc().strip().splitlines()[-1][:200]})
            continue
        moved = nbytes + 2 * M * (K + N)  # the weight as stored, x and y in bf16
        rows.append(row | {"ms": ms, "GB/s": moved / ms / 1e6, "TOPS": 2 * M * N * K / ms / 1e9})
    base = next(r["ms"] for r in rows if r["kernel"] == "bf16 F.linear")
    for r in rows:
        if "ms" in r:
            r["vs bf16"] = base / r["ms"]
    return rows


def w4a16(timer: Timer, buffers: int) -> list[dict]:
    rows = []
    for K, N in W4A16_SHAPES:
        contenders = w4a16_contenders(gaussian_linear(K, N))
        for M in W4A16_M:
            chosen = {name: c for name, c in contenders.items() if M == 1 or "split-K" not in name}
            rows += run(timer, M, K, N, chosen, lambda x: None, buffers)
            print_rows(rows[-len(chosen):])
    return rows


def w8a8(timer: Timer, buffers: int) -> list[dict]:
    rows = []
    for M, K, N in W8A8_SHAPES:
        contenders, prepare = w8a8_contenders(gaussian_linear(K, N))
        rows += run(timer, M, K, N, contenders, prepare, buffers)
        print_rows(rows[-len(contenders):])
    return rows


# --- the report ----------------------------------------------------------------------------------------------------

COLUMNS = ["M", "K", "N", "kernel", "ms", "vs bf16", "GB/s", "TOPS", "eager ms"]


def cell(row: dict, column: str) -> str:
    value = row.get(column)
    if value is None:
        return row["error"] if column == "ms" else ""
    return f"{value:.4f}" if column.endswith("ms") else f"{value:.2f}" if isinstance(value, float) else str(value)


def table(rows: list[dict]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    return "\n".join(lines + ["| " + " | ".join(cell(r, c) for c in COLUMNS) + " |" for r in rows])


def print_rows(rows: list[dict]) -> None:
    for r in rows:
        print("  ".join(f"{c}={cell(r, c)}" for c in COLUMNS if cell(r, c)), flush=True)


def limits(device: str) -> str:
    """The published peaks of `device`, or a sentence saying there are none here."""
    if device not in PEAKS:
        return f"Limits ({device}): no published peak for this device."
    peak = PEAKS[device]
    return f"Limits ({peak['GPU']}): {peak['GB/s']:.0f} GB/s, {peak['bf16 TFLOPS']:.0f} bf16 TFLOPS, {peak['int8 TOPS']:.0f} int8 TOPS."


def write_report(sections: dict[str, list[dict]], meta: dict) -> None:
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "kernels_bench.json").write_text(json.dumps({"meta": meta, **sections}, indent=1))
    lines = [
        "# Triton W4A16 / W8A8 kernels against cuBLAS and the libraries",
        "",
        f"Device: {meta['device']}; torch {meta['torch']}, triton {meta['triton']}. Written by experiments/kernels_bench.py.",
        f"ms: GPU time a call, from CUDA-graph replays of {meta['repeats']} calls; eager ms: the median of "
        f"{meta['repeats']} calls launched from Python between CUDA events. L2 flushed before each call, inputs rotating over "
        f"{meta['buffers']} buffers, bf16 activations. {limits(meta['device'])}",
    ]
    for title, rows in sections.items():
        lines += ["", f"## {title}", "", table(rows)]
    (RESULTS / "kernels_bench.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=["w4a16", "w8a8"], help="run one of the two benchmarks")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=100)
    parser.add_argument("--buffers", type=int, default=4, help="activation buffers to rotate over")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("kernels_bench.py times CUDA kernels and found no CUDA device; run it on a GPU machine "
                         "(the CPU tests of the kernels are tests/test_kernels_int8.py and tests/test_kernels_int4.py)")  # fmt: skip
    import triton

    torch.manual_seed(0)
    timer = Timer(args.warmup, args.repeats)
    sections = {}
    if args.only in (None, "w4a16"):
        sections["W4A16"] = w4a16(timer, args.buffers)
    if args.only in (None, "w8a8"):
        sections["W8A8"] = w8a8(timer, args.buffers)
    meta = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__,
            "repeats": args.repeats, "buffers": args.buffers, "limits": PEAKS.get(torch.cuda.get_device_name())}  # fmt: skip
    write_report(sections, meta)


if __name__ == "__main__":
    main()
