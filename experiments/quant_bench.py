"""W8A8 against fp32 `F.linear` on the CPU, at BERT-base's linear shapes.

One process, the same inputs: the median wall time of `W8A8Linear` (per-token activation quantization,
`torch._int_mm`, rescaling and bias: the whole layer) against `F.linear` in fp32 over the same weight, and
`torch._int_mm` alone (the integer matmul without the quantization around it). Inputs rotate over several
buffers so that no call reuses a cached activation. Tokens M = batch × sequence; (K, N) are BERT-base's
query/key/value/output (768 × 768), FFN up (768 → 3072) and down (3072 → 768).

    python experiments/quant_bench.py                 # all shapes, the CPU's threads
    python experiments/quant_bench.py --threads 2     # as on a 2-core machine

Writes runs/quant_bench/quant_bench_cpu.md and prints the table; with --write-reference, experiments/results/
instead, the committed report, which a run on a loaded machine must never overwrite.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from pathlib import Path

import torch
from common import add_output_args, resolve_output
import torch.nn.functional as F
from torch import nn

from minitransformers.quant.qlinear import W8A8Linear

RESULTS = Path(__file__).resolve().parent / "results"
SHAPES = [(128, 768, 768), (1024, 768, 768), (1024, 768, 3072), (1024, 3072, 768)]  # (M tokens, K in, N out)


def median_ms(fn, inputs: list[torch.Tensor], warmup: int, repeats: int) -> float:
    for i in range(warmup):
        fn(inputs[i % len(inputs)])
    times = []
    for i in range(repeats):
        x = inputs[i % len(inputs)]
        start = time.perf_counter()
        fn(x)
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The options and `out`: runs/quant_bench unless --out names another folder; experiments/results, the
    committed report, only with --write-reference."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch CPU threads (default: all)")
    parser.add_argument("--repeats", type=int, default=30, help="timed calls per measurement (default: 30)")
    add_output_args(parser, "quant_bench")
    args = parser.parse_args(argv)
    return resolve_output(parser, args, "quant_bench", argv)


def main(argv: list[str] | None = None) -> Path:
    """Run the bench, write its report into args.out and print it; -> the report's path."""
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    rows = []
    for M, K, N in SHAPES:
        linear = nn.Linear(K, N)
        w8a8 = W8A8Linear.from_linear(linear)
        inputs = [torch.randn(M, K) for _ in range(4)]  # (M, K) each
        a = [torch.randint(-127, 128, (M, K), dtype=torch.int8) for _ in range(4)]
        b = torch.randint(-127, 128, (K, N), dtype=torch.int8)
        with torch.inference_mode():
            fp32 = median_ms(lambda x: F.linear(x, linear.weight, linear.bias), inputs, 3, args.repeats)
            ours = median_ms(w8a8, inputs, 3, args.repeats)
            int_mm = median_ms(lambda x: torch._int_mm(x, b), a, 3, args.repeats)
            error = ((w8a8(inputs[0]) - linear(inputs[0])).norm() / linear(inputs[0]).norm()).item()
        rows.append({"shape": (M, K, N), "fp32": fp32, "w8a8": ours, "int_mm": int_mm, "error": error})
        print(f"M={M} K={K} N={N}: fp32 {fp32:.2f} ms, W8A8 {ours:.2f} ms ({fp32 / ours:.2f}×), _int_mm alone {int_mm:.2f} ms")

    device = f"CPU ({platform.machine()}, {platform.processor() or 'unknown'}), {args.threads} threads"
    lines = [
        "# W8A8 vs fp32 `F.linear` on the CPU",
        "",
        f"Command: `{args.command}`; torch {torch.__version__}; device: {device}.",
        f"Profile: {args.threads} threads; (M, K, N) {', '.join('×'.join(map(str, shape)) for shape in SHAPES)}; median of {args.repeats} calls after 3 warm-up, inputs rotating over 4 buffers.",
        "W8A8 is the whole layer: per-token absmax quantization of the fp32 input, `torch._int_mm`, rescaling, bias.",
        "",
        "| M × K → N | fp32 F.linear ms | W8A8 ms | speed-up | `_int_mm` alone ms | relative error ‖W8A8 − fp32‖/‖fp32‖ |",
        "|---|---|---|---|---|---|",
        *[f"| {r['shape'][0]} × {r['shape'][1]} → {r['shape'][2]} | {r['fp32']:.2f} | {r['w8a8']:.2f} | {r['fp32'] / r['w8a8']:.2f}× | {r['int_mm']:.2f} | {r['error']:.4f} |" for r in rows],
        "",
    ]  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "quant_bench_cpu.md"
    path.write_text("\n".join(lines))
    print(f"wrote {path}")
    print("\n".join(lines))
    return path


if __name__ == "__main__":
    main()
