"""End-to-end inference latency of whole encoders with the quantized layers of `quantize_model`, on one CUDA GPU.

MiniLM-L6-H384 and BERT-base (random weights: latency does not depend on their values), every encoder Linear
replaced by `quantize_model(model, method)`, everything else in bf16. On CUDA the replaced layers call the
Triton kernels of minitransformers/kernels (W4A16 for int4 / NF4, W8A8 for w8a8); bf16 is the same model with
nn.Linear (cuBLAS). Batches of 1 and 32 sequences of 128 tokens, timed two ways:

- eager: one forward as Python runs it, CUDA events around it; at batch 1 this is mostly launch overhead, since
  each of the ~70 Linear calls is a few microseconds of GPU work;
- graph: the same forward captured once in a CUDA graph and replayed, which removes the launch gaps and leaves
  the GPU time that the kernels decide.

Agreement: cosine similarity of the last hidden states with the bf16 model's (same weights before quantization).

    python experiments/kernels_e2e.py

Writes experiments/results/kernels_e2e.md and prints the table.
"""

from __future__ import annotations

import argparse
import statistics
import traceback
from pathlib import Path

import torch
import torch.nn.functional as F

from minitransformers.config import EncoderConfig
from minitransformers.model.encoder import Encoder
from minitransformers.quant.layer import QuantizedLinear
from minitransformers.quant.qlinear import quantize_model

RESULTS = Path(__file__).resolve().parent / "results"
MODELS = {
    "MiniLM-L6-H384": EncoderConfig(hidden_size=384, num_layers=6, num_heads=12, intermediate_size=1536),
    "BERT-base": EncoderConfig(),
}
METHODS = {"bf16": None, "int4 G=128": ("int4", {"group_size": 128}), "nf4 double-quant": ("nf4", {"double_quant": True}), "w8a8": ("w8a8", {})}


def to_bf16_except_quantized(model: torch.nn.Module) -> torch.nn.Module:
    """Cast every float parameter and buffer to bf16, except the stored weights of quantized layers (their scales
    and codebooks stay fp32, as the kernels read them); their biases are cast by the kernels themselves."""
    for module in model.modules():
        if isinstance(module, QuantizedLinear):
            continue
        for name, t in [*module.named_parameters(recurse=False), *module.named_buffers(recurse=False)]:
            if t.is_floating_point():
                t.data = t.data.to(torch.bfloat16)
    return model


def build(config: EncoderConfig, method) -> Encoder:
    torch.manual_seed(0)  # the same weights for every method
    model = Encoder(config, add_pooler=False).cuda().eval()
    if method is not None:
        name, options = method
        quantize_model(model, name, **options)
    return to_bf16_except_quantized(model)


def median_ms(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def graphed(fn):
    """fn captured in a CUDA graph (after warm-up runs, which also settle the kernels' autotuning): replay it."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return graph.replay


@torch.inference_mode()
def measure(model: Encoder, ids: torch.Tensor, reference: torch.Tensor | None, repeats: int) -> dict:
    forward = lambda: model(ids)  # noqa: E731
    hidden = forward()  # (B, T, H); also compiles and autotunes
    row = {"eager ms": median_ms(forward, repeats)}
    try:
        row["graph ms"] = median_ms(graphed(forward), repeats)
    except Exception:
        row["graph error"] = traceback.format_exc().strip().splitlines()[-1][:160]
    if reference is not None:
        row["cosine"] = F.cosine_similarity(hidden.float().flatten(0, 1), reference.float().flatten(0, 1), dim=-1).mean().item()
    return row, hidden


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--repeats", type=int, default=50)
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("kernels_e2e.py times CUDA kernels and found no CUDA device; run it on a GPU machine")
    rows = []
    for model_name, config in MODELS.items():
        for batch in args.batches:
            ids = torch.randint(1000, config.vocab_size, (batch, args.seq_len), device="cuda")  # (B, T)
            reference = None
            for method_name, method in METHODS.items():
                row = {"model": model_name, "batch": batch, "method": method_name}
                try:
                    numbers, hidden = measure(build(config, method), ids, reference, args.repeats)
                    row |= numbers
                except Exception:
                    row["eager ms"] = None
                    row["graph error"] = traceback.format_exc().strip().splitlines()[-1][:160]
                    hidden = None
                reference = hidden if method is None else reference
                rows.append(row)
                print(row, flush=True)
    for row in rows:  # speed-ups against bf16 in the same model and batch
        base = next(r for r in rows if r["model"] == row["model"] and r["batch"] == row["batch"] and r["method"] == "bf16")
        for kind in ("eager", "graph"):
            if row.get(f"{kind} ms") and base.get(f"{kind} ms"):
                row[f"{kind} ×bf16"] = base[f"{kind} ms"] / row[f"{kind} ms"]
    write_report(rows, args)


def write_report(rows: list[dict], args) -> None:
    columns = ["model", "batch", "method", "eager ms", "eager ×bf16", "graph ms", "graph ×bf16", "cosine", "graph error"]
    fmt = lambda v: "" if v is None else f"{v:.4f}" if isinstance(v, float) else str(v)  # noqa: E731
    lines = [
        "# End-to-end encoder latency with quantized Linear layers",
        "",
        f"Device: {torch.cuda.get_device_name()}; torch {torch.__version__}. Written by experiments/kernels_e2e.py. "
        f"Sequences of {args.seq_len} tokens, random weights, median of {args.repeats} forwards (CUDA events); "
        "×bf16 > 1 is faster than the bf16 model. cosine: mean cosine similarity of the last hidden states with bf16's.",
        "",
        "| " + " | ".join(columns) + " |",
        "|" + "---|" * len(columns),
    ]
    lines += ["| " + " | ".join(fmt(row.get(c)) for c in columns) + " |" for row in rows]
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "kernels_e2e.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
