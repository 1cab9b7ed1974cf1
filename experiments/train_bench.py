"""Training throughput: our sequence classifier against `transformers.BertForSequenceClassification`.

The same BERT config, the same batch, the same process: real (non-padding) tokens per second of a full
training step (forward, cross-entropy, backward, gradient clipping, AdamW), median over repeats after warm-up,
timed with CUDA events on a GPU or the wall clock on a CPU.

    python experiments/train_bench.py                 # GPU: BERT-base, bf16 autocast, 16 × 512, half the rows padded to 256
    python experiments/train_bench.py --batch 2 --seq 128 --layers 2   # a CPU-sized run

Writes runs/train_bench/train_bench_<device>.md and prints the table last; with --write-reference,
experiments/results/ instead, the committed report, which a run on a loaded machine must never overwrite.
"""

from __future__ import annotations

import argparse
import contextlib
import re
import statistics
import tempfile
import time
from pathlib import Path

import torch
from common import add_output_args, resolve_output
import torch.nn.functional as F

from minitransformers import Encoder, EncoderConfig
from minitransformers.model import SequenceClassifier

RESULTS = Path(__file__).resolve().parent / "results"


def make_batch(vocab: int, batch: int, seq: int, device) -> dict:
    """Random ids; the second half of the rows hold seq/2 real tokens and seq/2 padding."""
    g = torch.Generator().manual_seed(0)
    input_ids = torch.randint(1000, vocab, (batch, seq), generator=g)
    attention_mask = torch.ones(batch, seq, dtype=torch.long)
    attention_mask[batch // 2 :, seq // 2 :] = 0
    input_ids[attention_mask == 0] = 0
    labels = torch.randint(0, 2, (batch,), generator=g)
    return {k: v.to(device) for k, v in dict(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=torch.zeros_like(input_ids), labels=labels).items()}


def timer(device):
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        return lambda: start.record(), lambda: (end.record(), end.synchronize(), start.elapsed_time(end) / 1e3)[-1]
    t = {}
    return lambda: t.update(t0=time.perf_counter()), lambda: time.perf_counter() - t["t0"]


def measure(name, model, logits_of, optimizer, batch, dtype, warmup, repeats) -> dict:
    model.train()
    autocast = torch.autocast(batch["input_ids"].device.type, dtype=dtype) if dtype != torch.float32 else contextlib.nullcontext()
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids")}

    def step():
        with autocast:
            loss = F.cross_entropy(logits_of(model(**inputs)).float(), batch["labels"])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(warmup):
        step()
    start, stop = timer(batch["input_ids"].device)
    times = []
    for _ in range(repeats):
        start()
        step()
        times.append(stop())
    seconds = statistics.median(times)
    tokens = int(batch["attention_mask"].sum())
    return {"name": name, "ms": seconds * 1e3, "tokens_per_s": tokens / seconds}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The options, with the device's defaults filled in, and `out`: runs/train_bench unless --out names another
    folder; experiments/results, the committed report, only with --write-reference."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=None, help="default: 16 on a GPU, 4 on a CPU")
    parser.add_argument("--seq", type=int, default=None, help="default: 512 on a GPU, 128 on a CPU")
    parser.add_argument("--layers", type=int, default=12, help="BERT-base has 12")
    parser.add_argument("--warmup", type=int, default=None, help="default: 5 on a GPU, 2 on a CPU")
    parser.add_argument("--repeats", type=int, default=None, help="default: 20 on a GPU, 5 on a CPU")
    parser.add_argument("--compile", action="store_true", help="also time both models under torch.compile")
    add_output_args(parser, "train_bench")
    args = parser.parse_args(argv)
    gpu = args.device.startswith("cuda")
    for name, on_gpu, on_cpu in (("batch", 16, 4), ("seq", 512, 128), ("warmup", 5, 2), ("repeats", 20, 5)):
        if getattr(args, name) is None:
            setattr(args, name, on_gpu if gpu else on_cpu)
    return resolve_output(parser, args, "train_bench", argv)


def main(argv: list[str] | None = None) -> Path:
    """Run the bench, write its report into args.out and print it; -> the report's path."""
    args = parse_args(argv)
    import transformers

    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    config = EncoderConfig(num_layers=args.layers, hidden_dropout=0.1, attention_dropout=0.1)  # BERT-base otherwise
    torch.manual_seed(0)
    reference = SequenceClassifier(Encoder(config), num_labels=2)
    batch = make_batch(config.vocab_size, args.batch, args.seq, device)
    fused = device.type == "cuda" or None
    rows = []

    def run(name, model, logits_of, fused_adamw, compile=None):
        """compile: None (eager), "default", or "reduce-overhead" (CUDA graphs: one replay per input shape)."""
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=fused_adamw)
        step_model = torch.compile(model, mode=None if compile == "default" else compile) if compile else model
        rows.append(measure(name, step_model, logits_of, optimizer, batch, dtype, args.warmup + (5 if compile else 0), args.repeats))
        print(f"{rows[-1]['name']}: {rows[-1]['tokens_per_s']:,.0f} tokens/s", flush=True)

    with tempfile.TemporaryDirectory() as tmp:  # the same weights in every row
        reference.save_pretrained(tmp)
        hf = lambda: transformers.BertForSequenceClassification.from_pretrained(tmp, attn_implementation="sdpa").to(device)
        ours = lambda **options: SequenceClassifier.from_pretrained(tmp, **options).to(device)
        adamw = "fused AdamW" if fused else "AdamW"
        graphs = "reduce-overhead" if device.type == "cuda" else "default"  # CUDA graphs only where there is CUDA
        run("transformers (sdpa, AdamW)", hf(), lambda out: out.logits, None)
        if fused:
            run("transformers (sdpa, fused AdamW)", hf(), lambda out: out.logits, fused)
        if args.compile:
            run(f"transformers (sdpa, {adamw}) + torch.compile {graphs}", hf(), lambda out: out.logits, fused, compile=graphs)
        run(f"minitransformers (sdpa, {adamw})", ours(), lambda logits: logits, fused)
        run("minitransformers + unpad", ours(unpad=True), lambda logits: logits, fused)
        if args.compile:
            run(f"minitransformers + torch.compile {graphs}", ours(), lambda logits: logits, fused, compile=graphs)
            run("minitransformers + unpad + torch.compile default", ours(unpad=True), lambda logits: logits, fused, compile="default")
            if graphs != "default":
                run(f"minitransformers + unpad + torch.compile {graphs}", ours(unpad=True), lambda logits: logits, fused, compile=graphs)

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    base = rows[0]["tokens_per_s"]
    lines = [
        f"# Training step throughput: {name}",
        "",
        f"Command: `{args.command}`; torch {torch.__version__}, transformers {transformers.__version__}; device: {name}.",
        f"Profile: BERT-base width (768, 12 heads, FFN 3072), {args.layers} layers, batch {args.batch} × {args.seq}, rows {args.batch // 2}..{args.batch - 1} padded to {args.seq // 2}; "
        f"{'bf16 autocast' if dtype == torch.bfloat16 else 'fp32'}; a step is forward, cross-entropy, backward, clipping and AdamW; median of {args.repeats} after {args.warmup} warm-up"
        f"{'; eager and torch.compile' if args.compile else '; eager only'}.",
        "",
        "The ratio is against the first row: `transformers` as it comes, with torch's default AdamW.",
        "",
        "| implementation | ms / step | real tokens / s | × transformers |",
        "|---|---|---|---|",
        *[f"| {r['name']} | {r['ms']:.1f} | {r['tokens_per_s']:,.0f} | {r['tokens_per_s'] / base:.2f} |" for r in rows],
        "",
    ]
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"train_bench_{slug(name)}.md"
    path.write_text("\n".join(lines))
    print(f"wrote {path}")
    print("\n".join(lines))
    return path


def slug(device_name: str) -> str:
    """'NVIDIA H100 80GB HBM3' -> 'nvidia_h100_80gb_hbm3', the report's file name."""
    return re.sub(r"[^a-z0-9]+", "_", device_name.lower()).strip("_")


if __name__ == "__main__":
    main()
