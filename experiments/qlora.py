"""QLoRA against LoRA and full fine-tuning: accuracy, weight memory and training memory, all-MiniLM-L6-v2 on
Rotten Tomatoes sentiment (Dettmers et al. 2023; peft/qlora.py).

    python experiments/qlora.py --profile quick   # 640 examples, 1 epoch, 300 scored: about 2 minutes on the 2-core CPU machine (measured: see the report's wall time)
    python experiments/qlora.py --profile full    # meant for a GPU (H100): all 8454 examples, 4 epochs, an lr grid, 3 seeds

Variants, all with `finetune --pooling mean --batch-size 32`:
    full                 every weight trains, fp32 weights (bf16 autocast on CUDA)
    lora                 LoRA r = 8, α = 16 on every Linear of the layers, over the fp32 base (bf16 compute on CUDA)
    qlora                the same LoRA over the NF4 base with double quantization (4.127 bits a weight)
    qlora_no_dq          the same, absmax kept in float32 (4.5 bits a weight)
    qlora_checkpointing  qlora with gradient checkpointing of the encoder layers
LoRA and QLoRA share their targets, so that the base's storage is the only difference, as in the paper's
comparison of QLoRA with 16-bit LoRA (section 4). The full profile tries three learning rates per variant on one
seed, keeps the best on validation, and runs it on two more seeds; the quick profile runs one rate (the second of
each grid), one seed, and scores the first 300 validation and test sentences.

Memory, per variant:
- weights: the encoder's Linear weights as stored (fp32, or NF4 codes + block statistics), against the same
  weights in bf16; and the whole model (embeddings, LayerNorms, biases, LoRA, head included).
- peak training memory of one optimizer step on a batch of 32 × max-length tokens (the second step, so that
  AdamW's moments exist): on CUDA `torch.cuda.max_memory_allocated`; on a CPU, the peak of the bytes of every
  live tensor, counted by `TensorBytes` (the weights before the step, plus every tensor the step allocates,
  from creation to release: activations kept for backward, transient dequantized weights, gradients, AdamW
  state). The process's peak RSS, which finetune reports on a CPU, is mostly the PyTorch library itself.

Writes runs/qlora_<profile>/ and experiments/results/qlora.{json,md}; the last line printed is JSON.
"""

from __future__ import annotations

import contextlib
import gc
import json
import sys
import time
import weakref
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from minitransformers.model import SequenceClassifier
from minitransformers.peft.lora import LoRAConfig
from minitransformers.peft.methods import apply_method
from minitransformers.peft.qlora import ALL_LINEAR, QLoRAConfig, base_memory
from minitransformers.recipes.finetune import FinetuneConfig
from minitransformers.text.sources import data_dir

from common import best_on_validation, device_name, experiment_parser, flags, over_seeds, points_vs, reference_name, run_all, scored_on, wall_time

RESULTS = Path(__file__).resolve().parent / "results"
LORA = {"r": 8, "alpha": 16, "dropout": 0.0, "targets": ALL_LINEAR}
VARIANTS = {  # name -> (method, its options, other FinetuneConfig fields, learning-rate grid: the second runs in the quick profile)
    "full": ("full", None, {}, [5e-5, 1e-4, 2e-4]),
    "lora": ("lora", LoRAConfig(**LORA), {}, [5e-4, 1e-3, 2e-3]),
    "qlora": ("qlora", QLoRAConfig(**LORA, double_quant=True), {}, [5e-4, 1e-3, 2e-3]),
    "qlora_no_dq": ("qlora", QLoRAConfig(**LORA, double_quant=False), {}, [5e-4, 1e-3, 2e-3]),
    "qlora_checkpointing": ("qlora", QLoRAConfig(**LORA, double_quant=True), {"gradient_checkpointing": True}, [5e-4, 1e-3, 2e-3]),
}
PROFILES = {  # "finetune": FinetuneConfig fields
    "quick": {"lrs": slice(1, 2), "seeds": [0], "max_length": 64, "finetune": {"max_train_examples": 640, "epochs": 1, "max_eval_examples": 300}},
    "full": {"lrs": slice(0, 3), "seeds": [0, 1, 2], "max_length": 128, "finetune": {"epochs": 4}},
}
KEPT = ("trainable_parameters", "test_accuracy", "validation_accuracy", "train_seconds", "peak_memory_mb", "saved_bytes")


# --- peak training memory --------------------------------------------------------------------------------------------


class TensorBytes(TorchDispatchMode):
    """Counts the bytes of the tensors that ops create while it is active, from creation until their storage is
    freed (when the last tensor object using it is), and keeps the peak: a CPU stand-in for CUDA's
    max_memory_allocated. Storages at the `existing` addresses (the weights) are the caller's to add."""

    def __init__(self, existing: set[int]):
        super().__init__()
        self.existing = existing
        self.users: dict[int, int] = {}  # storage address -> live tensors on it
        self.sizes: dict[int, int] = {}
        self.now = self.peak = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and t.device.type == "cpu":
                self.track(t)
        return out

    def track(self, t: torch.Tensor) -> None:
        storage = t.untyped_storage()
        address, size = storage.data_ptr(), storage.nbytes()
        if address in self.users:  # a view, or an in-place op's result: one more tensor on a counted storage
            self.users[address] += 1
        elif size and address not in self.existing:
            self.users[address], self.sizes[address] = 1, size
            self.now += size
            self.peak = max(self.peak, self.now)
        else:
            return
        weakref.finalize(t, self.release, address)

    def release(self, address: int) -> None:
        self.users[address] -= 1
        if self.users[address] == 0:
            del self.users[address]
            self.now -= self.sizes.pop(address)


def tensor_bytes(tensors) -> int:
    return sum(t.untyped_storage().nbytes() for t in {t.untyped_storage().data_ptr(): t for t in tensors}.values())


def build(base: Path, variant: str) -> SequenceClassifier:
    method, options, fields, _ = VARIANTS[variant]
    model = apply_method(SequenceClassifier.from_encoder(base, 2, pooling="mean"), method, options)
    model.encoder.gradient_checkpointing = fields.get("gradient_checkpointing", False)
    return model


def training_step_memory(model: SequenceClassifier, device: torch.device, precision: str, batch_size: int, max_length: int) -> dict:
    """Peak bytes of a training step (forward, backward, AdamW) on random ids of batch_size × max_length, the
    second of two steps; CUDA's allocator peak, or on a CPU `TensorBytes` plus the weights already there."""
    model.to(device).train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if precision == "bf16" else contextlib.nullcontext()
    vocab = model.encoder.config.vocab_size

    def step():
        ids = torch.randint(1000, vocab, (batch_size, max_length), device=device)  # real word pieces, no padding
        with autocast:
            loss = F.cross_entropy(model(ids, torch.ones_like(ids)), torch.randint(0, 2, (batch_size,), device=device))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step()  # AdamW's moments now exist
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        step()
        torch.cuda.synchronize(device)
        return {"peak_step_bytes": torch.cuda.max_memory_allocated(device), "counted_by": "torch.cuda.max_memory_allocated"}
    state = [t for s in optimizer.state.values() for t in s.values() if isinstance(t, torch.Tensor)]
    resident = [*model.parameters(), *model.buffers(), *state]
    with TensorBytes({t.untyped_storage().data_ptr() for t in resident}) as counter:
        step()
    return {"peak_step_bytes": tensor_bytes(resident) + counter.peak, "counted_by": "live tensor bytes (TensorBytes)"}


def memory(base: Path, variant: str, device: torch.device, precision: str, max_length: int) -> dict:
    model = build(base, variant)
    weights = base_memory(model)
    row = {
        "linear_weight_bytes": weights["bytes"], "linear_bf16_bytes": weights["bf16_bytes"], "bits_per_weight": weights["bits_per_weight"],
        "ratio_to_bf16": weights["ratio_to_bf16"], "model_bytes": tensor_bytes([*model.parameters(), *model.buffers()]),
        **training_step_memory(model, device, precision, 32, max_length),
    }  # fmt: skip
    del model
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return row


# --- training runs ---------------------------------------------------------------------------------------------------


def train(root: Path, base: Path, jobs: list[tuple[str, float, int]], args, workers: int) -> list[dict]:
    """Fine-tune each (variant, lr, seed) from `base`; -> one row of KEPT metrics per job."""
    profile = PROFILES[args.profile]
    configs = [
        FinetuneConfig(model=str(base), data="sentiment", out=str(root / f"{variant}_lr{lr:g}_seed{seed}"), method=VARIANTS[variant][0],
                       method_options=VARIANTS[variant][1], **VARIANTS[variant][2], lr=lr, seed=seed, pooling="mean", batch_size=32, device=args.device,
                       precision=args.precision, max_length=profile["max_length"], **profile["finetune"])
        for variant, lr, seed in jobs
    ]  # fmt: skip
    return [{"variant": variant, "lr": lr, "seed": seed, **{k: m[k] for k in KEPT}} for (variant, lr, seed), m in zip(jobs, run_all(configs, workers))]


def main() -> None:
    start = time.perf_counter()
    parser = experiment_parser(__doc__, PROFILES, workers=8)
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    args = parser.parse_args()
    profile, root, base = PROFILES[args.profile], Path("runs") / f"qlora_{args.profile}", data_dir("minilm")

    measured = {variant: memory(base, variant, torch.device(args.device), args.precision, profile["max_length"]) for variant in args.variants}
    workers = args.workers if args.device.startswith("cuda") else 1
    first, *more = profile["seeds"]
    runs = train(root, base, [(v, lr, first) for v in args.variants for lr in VARIANTS[v][3][profile["lrs"]]], args, workers)
    chosen = best_on_validation(runs, "variant")
    runs += train(root, base, [(v, chosen[v]["lr"], seed) for v in args.variants for seed in more], args, workers)
    rows = [{**over_seeds(runs, chosen[v], "variant"), **measured[v]} for v in args.variants]

    report = {"profile": args.profile, "model": reference_name(base), "max_length": profile["max_length"],
              "finetune_args": flags({"max_length": profile["max_length"], **profile["finetune"]}),
              "precision": args.precision, "rows": rows, "runs": runs, "device_name": device_name(args.device), "torch": torch.__version__}  # fmt: skip
    RESULTS.mkdir(parents=True, exist_ok=True)
    report["wall_seconds"] = time.perf_counter() - start  # this command's, even where rows of earlier commands are kept
    path = RESULTS / "qlora.json"  # one entry per profile; the markdown is rendered from it
    reports = json.loads(path.read_text()) if path.exists() else {}
    reports[args.profile] = merged(reports.get(args.profile), report, args.variants)
    path.write_text(json.dumps(reports, indent=2) + "\n")
    (RESULTS / "qlora.md").write_text("\n".join(render(reports[k]) for k in sorted(reports)))
    print(f"wrote {RESULTS / 'qlora.md'}")
    print(json.dumps(rows))


def merged(old: dict | None, new: dict, variants: list[str]) -> dict:
    """The new report, keeping the old report's rows and runs of the variants this run did not train (a run of some
    variants updates theirs, on the same profile), each row noting its device, torch and precision."""
    stamp = {k: new[k] for k in ("device_name", "torch", "precision")} | {"command": " ".join(sys.argv[1:])}
    new["rows"] = [{**stamp, **row} for row in new["rows"]]
    if old is None:
        return new
    keep = lambda items: [x for x in items if x["variant"] not in variants]  # noqa: E731
    new["rows"] = sorted(keep(old["rows"]) + new["rows"], key=lambda row: list(VARIANTS).index(row["variant"]))
    new["runs"] = keep(old["runs"]) + new["runs"]
    return new


def commands(r: dict) -> str:
    """The command line(s) that trained the report's rows, with the variants each trained."""
    made = {}
    for row in r["rows"]:
        made.setdefault(row.get("command", f"--profile {r['profile']}"), []).append(row["variant"])
    if len(made) == 1:
        return f"`python experiments/qlora.py {next(iter(made))}`"
    return "; ".join(f"`python experiments/qlora.py {c}` ({', '.join(v)})" for c, v in made.items())


def wall(r: dict) -> str:
    """'; wall time W' of the command that wrote the report, naming it the latest where rows of earlier ones are kept; '' before it was recorded."""
    if "wall_seconds" not in r:
        return ""
    return f"; wall time {wall_time(r['wall_seconds'])}" + (" (the latest command)" if len({row.get("command") for row in r["rows"]}) > 1 else "")


def mb(n: float) -> str:
    return f"{n / 2**20:.1f}"


def render(r: dict) -> str:
    acc = {row["variant"]: row["test_accuracy"] for row in r["rows"]}
    lines = [
        f"# QLoRA, {r['profile']} profile: {r['model']} on Rotten Tomatoes sentiment",
        "",
        f"Command: {commands(r)}; device {r['device_name']}, torch {r['torch']}, precision {r['precision']}" + wall(r) + ".",
        f"Every variant: `finetune --pooling mean --batch-size 32 {' '.join(r['finetune_args'])}`; LoRA and QLoRA: r = 8, α = 16 on every Linear "
        "of the layers (query key value out up down). The learning rate is "
        + (f"the second of the variant's grid (quick: one rate, one seed; each run scores {scored_on(r['finetune_args'])})." if r["profile"] == "quick" else
           "the best of the variant's grid on validation, on the first seed."),
        "Linear weights: the encoder's 37 Linear layers (6 × 6 and the pooler) as stored, and their ratio to the same weights in bf16. "
        f"Peak step: one training step on 32 × {r['max_length']} tokens, counted by {r['rows'][0]['counted_by']}.",
        "",
        "| variant | lr | trainable params | test accuracy (mean ± std) | Δ vs lora | validation accuracy | Linear weights MB | bits / weight | × bf16 | model MB | peak step MB | train s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
        *[f"| {row['variant']} | {row['lr']:g} | {row['trainable_parameters']:,} | {row['test_accuracy']:.4f} ± {row['test_accuracy_std']:.4f} | "
          f"{points_vs(row, acc, 'lora')} | {row['validation_accuracy']:.4f} | {mb(row['linear_weight_bytes'])} | "
          f"{row['bits_per_weight']:.3f} | {row['ratio_to_bf16']:.3f} | {mb(row['model_bytes'])} | {mb(row['peak_step_bytes'])} | {row['train_seconds']:.0f} |"
          for row in r["rows"]],
        "",
        "The embeddings (30,522 × 384 word vectors, 46.9 MB in fp32) stay float in every variant, so the model column shrinks far less than the Linear "
        "weights. The weights' bytes are the same through training: the NF4 base is frozen bit for bit (tests/test_qlora.py).",
        "",
    ]  # fmt: skip
    if r["profile"] == "quick":
        lines += ["The quick profile is a smoke run of 20 steps per variant: too short to compare accuracies. The full profile does. "
                  "On a shared CPU the train seconds say more about what else ran at the time than about the variant.", ""]  # fmt: skip
    else:
        lines += ["train s: the wall time of a run while the invocation's other runs (--workers) shared the GPU, comparable "
                  "between the rows of one command only.", ""]  # fmt: skip
    if r["profile"] != "quick" and {"lora", "qlora"} <= set(acc):
        agrees = abs(acc["qlora"] - acc["lora"]) <= 0.01
        lines += [f"Dettmers et al. (section 4, 5): QLoRA with NF4 and double quantization matches 16-bit LoRA. Here QLoRA is "
                  f"{100 * (acc['qlora'] - acc['lora']):+.1f} points from LoRA: {'within' if agrees else 'not within'} 1 point.", ""]  # fmt: skip
    if len(r["runs"]) > len(r["rows"]):
        lines += ["Every run:", "", "| variant | lr | seed | validation accuracy | test accuracy |", "|---|---|---|---|---|"]
        lines += [f"| {run['variant']} | {run['lr']:g} | {run['seed']} | {run['validation_accuracy']:.4f} | {run['test_accuracy']:.4f} |" for run in r["runs"]]
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
