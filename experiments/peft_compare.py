"""Every fine-tuning method on the same task and budget: full, a linear probe, BitFit, LoRA, Houlsby and
Pfeiffer adapters, prompt tuning and prefix tuning, each from all-MiniLM-L6-v2 on Rotten Tomatoes sentiment.

    python experiments/peft_compare.py --profile quick   # 640 examples, 1 epoch, 300 scored: about 2 minutes on the 2-core CPU machine (measured: see the report's wall time)
    python experiments/peft_compare.py --profile full    # meant for a GPU: all 8454 examples, 4 epochs, an lr grid

The budget is the same for all: data, epochs, batch 32, mean pooling, AdamW with warmup and linear decay.
Only the learning rate differs, because the methods need very different ones: a few frozen-base parameters
take larger steps than a whole pretrained model (prompt tuning's paper used 0.3). The full profile tries
four learning rates per method on one seed, keeps the one with the best validation accuracy, and runs
it on two more seeds; the table gives its mean test accuracy. The quick profile runs one rate (the third of
each grid), one seed, and scores the first 300 validation and test sentences: a smoke run, too short (20 steps)
to test the papers' claims, which the report checks on the full profile only. On CUDA the runs share the GPU in
parallel processes, so train times are comparable with each other within a run, not with a GPU to oneself.

Writes runs/peft_compare_<profile>/ and experiments/results/peft_compare.{json,md} (and a PNG of accuracy
against trainable parameters when matplotlib is installed); the last line printed is JSON.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from minitransformers.peft.methods import METHODS as ALL_METHODS
from minitransformers.recipes.finetune import FinetuneConfig
from minitransformers.text.sources import data_dir

from common import best_on_validation, device_name, experiment_parser, flags, over_seeds, points_vs, reference_name, run_all, scored_on, wall_time

RESULTS = Path(__file__).resolve().parent / "results"
METHODS = tuple(m for m in ALL_METHODS if m != "qlora")  # QLoRA, a quantized base, has its own experiment: qlora.py
LR_GRID = {  # around what each paper used with AdamW-like optimisers; the third runs in the quick profile
    "full": [2e-5, 5e-5, 1e-4, 2e-4],  # BERT: 2e-5 to 5e-5; a 6-layer, 384-wide model takes larger steps
    "head": [1e-3, 3e-3, 1e-2, 3e-2],  # a linear probe on frozen features
    "bitfit": [3e-4, 1e-3, 3e-3, 1e-2],  # Ben Zaken et al.: 1e-4 to 1e-3
    "lora": [2e-4, 5e-4, 1e-3, 2e-3],  # Hu et al., RoBERTa-base on GLUE: 4e-4 to 5e-4
    "houlsby": [1e-4, 3e-4, 1e-3, 3e-3],  # Houlsby et al.: 3e-5 to 3e-3
    "pfeiffer": [1e-4, 3e-4, 1e-3, 3e-3],  # Pfeiffer et al.: 1e-4
    "prompt": [3e-3, 1e-2, 3e-2, 1e-1],  # Lester et al.: 0.3 with Adafactor
    "prefix": [1e-4, 3e-4, 1e-3, 3e-3],  # Li & Liang: 5e-5 to 8e-5 for GPT-2 generation, through the MLP
}
PROFILES = {  # "finetune": FinetuneConfig fields
    "quick": {"lrs": slice(2, 3), "seeds": [0], "finetune": {"max_train_examples": 640, "epochs": 1, "max_length": 64, "max_eval_examples": 300}},
    "full": {"lrs": slice(0, 4), "seeds": [0, 1, 2], "finetune": {"epochs": 4, "max_length": 128}},
}
def train(root: Path, base: Path, jobs: list[tuple[str, float, int]], args, workers: int) -> list[dict]:
    """Fine-tune each (method, lr, seed) from `base`; -> one row of KEPT metrics per job."""
    configs = [
        FinetuneConfig(model=str(base), data="sentiment", out=str(root / f"{method}_lr{lr:g}_seed{seed}"), method=method, lr=lr, seed=seed,
                       pooling="mean", batch_size=32, device=args.device, precision=args.precision, **PROFILES[args.profile]["finetune"])
        for method, lr, seed in jobs
    ]  # fmt: skip
    return [{"method": method, "lr": lr, "seed": seed, **{k: m[k] for k in KEPT}} for (method, lr, seed), m in zip(jobs, run_all(configs, workers))]


KEPT = ("trainable_parameters", "total_parameters", "trainable_percent", "test_accuracy", "validation_accuracy", "train_seconds", "peak_memory_mb", "saved_bytes")
# What each paper reports, and the test that says whether our table agrees: a rule on our rows.
CLAIMS = [
    ("LoRA (Hu et al. 2021, Table 2): r = 8 on W_q, W_v matches full fine-tuning on GLUE with RoBERTa-base (SST-2 95.1 vs 94.8).",
     lambda acc: acc["lora"] >= acc["full"] - 0.01, "LoRA within 1 point of full"),
    ("Houlsby et al. 2019: adapters come within 0.4 points of full fine-tuning on GLUE, training 3.6% of the parameters per task.",
     lambda acc: acc["houlsby"] >= acc["full"] - 0.01, "Houlsby within 1 point of full"),
    ("Pfeiffer et al. 2021: one adapter per layer, after the FFN, does as well as Houlsby's two.",
     lambda acc: acc["pfeiffer"] >= acc["houlsby"] - 0.01, "Pfeiffer within 1 point of Houlsby"),
    ("BitFit (Ben Zaken et al. 2022): training the biases alone is competitive with full fine-tuning on small and medium data.",
     lambda acc: acc["bitfit"] >= acc["full"] - 0.02, "BitFit within 2 points of full"),
    ("Lester et al. 2021, Figure 1: prompt tuning lags model tuning by a wide margin below a billion parameters, closing the gap only near 10B.",
     lambda acc: acc["prompt"] < acc["full"] - 0.02, "prompt tuning more than 2 points below full"),
    ("Li & Liang 2021: prefix tuning with 0.1% of the parameters is comparable to fine-tuning on generation; on NLU with small models it lags (P-tuning v2, Liu et al. 2022, Table 1).",
     lambda acc: acc["prefix"] < acc["full"] - 0.01, "prefix tuning more than 1 point below full"),
    ("Every adapting method beats the linear probe: a frozen sentence embedding alone leaves accuracy on the table.",
     lambda acc: min(acc[m] for m in METHODS if m != "head") > acc["head"], "every method above the probe"),
]  # fmt: skip


def main() -> None:
    start = time.perf_counter()
    parser = experiment_parser(__doc__, PROFILES, workers=16)
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    args = parser.parse_args()
    profile, root, base = PROFILES[args.profile], Path("runs") / f"peft_compare_{args.profile}", data_dir("minilm")

    workers = args.workers if args.device.startswith("cuda") else 1
    first, *more = profile["seeds"]
    runs = train(root, base, [(method, lr, first) for method in args.methods for lr in LR_GRID[method][profile["lrs"]]], args, workers)
    chosen = best_on_validation(runs, "method")
    runs += train(root, base, [(method, chosen[method]["lr"], seed) for method in args.methods for seed in more], args, workers)
    rows = [over_seeds(runs, chosen[method], "method") for method in args.methods]

    report = {"profile": args.profile, "model": reference_name(base), "finetune_args": flags(profile["finetune"]), "rows": rows,
              "runs": runs, "device_name": device_name(args.device), "torch": torch.__version__}  # fmt: skip
    RESULTS.mkdir(parents=True, exist_ok=True)
    report["png"] = plot(report["rows"], RESULTS / f"peft_compare_{args.profile}.png")
    report["wall_seconds"] = time.perf_counter() - start
    path = RESULTS / "peft_compare.json"  # one entry per profile; the markdown is rendered from it
    reports = {**(json.loads(path.read_text()) if path.exists() else {}), args.profile: report}
    path.write_text(json.dumps(reports, indent=2) + "\n")
    (RESULTS / "peft_compare.md").write_text("\n".join(render(reports[k]) for k in sorted(reports)))
    print(f"wrote {RESULTS / 'peft_compare.md'}")
    print(json.dumps(report["rows"]))


def plot(rows: list[dict], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, ax = plt.subplots(figsize=(6, 4))
    for row in rows:
        ax.scatter(row["trainable_parameters"], row["test_accuracy"])
        ax.annotate(row["method"], (row["trainable_parameters"], row["test_accuracy"]), textcoords="offset points", xytext=(4, 4))
    ax.set(xscale="log", xlabel="trainable parameters (log scale)", ylabel="test accuracy", title="Fine-tuning methods, MiniLM on sentiment")
    fig.savefig(path, dpi=120, bbox_inches="tight")
    return True


def render(r: dict) -> str:
    acc = {row["method"]: row["test_accuracy"] for row in r["rows"]}
    lines = [
        f"# Parameter-efficient fine-tuning, {r['profile']} profile: {r['model']} on Rotten Tomatoes sentiment",
        "",
        f"Command: `python experiments/peft_compare.py --profile {r['profile']}`; device {r['device_name']}, torch {r['torch']}"
        + (f"; wall time {wall_time(r['wall_seconds'])}." if "wall_seconds" in r else "."),
        f"Every method: `finetune --pooling mean --batch-size 32 {' '.join(r['finetune_args'])}`, each at its own learning rate "
        + (f"(quick: the third rate of its grid, one seed; each run scores {scored_on(r['finetune_args'])}). " if r["profile"] == "quick" else
           "(the best of its grid on the validation split, on the first seed; the test split is scored once per run). ") + "Default method options:",
        "LoRA r = 8, α = 16 on query and value; adapters with reduction factor 16; 20 virtual tokens for prompt and prefix tuning "
        "(prompt: sampled-vocabulary init; prefix: through the MLP, dropped at save time).",
        "Peak memory: CUDA `max_memory_allocated` per run on a GPU, the process's peak RSS on a CPU. Saved: the bytes the run keeps "
        "(the whole model for full fine-tuning, the trained tensors otherwise).",
        "",
        "| method | lr | trainable params | % of the model | test accuracy (mean ± std over seeds) | Δ vs full | validation accuracy | train s | peak memory MB | saved |",
        "|---|---|---|---|---|---|---|---|---|---|",
        *[f"| {row['method']} | {row['lr']:g} | {row['trainable_parameters']:,} | {row['trainable_percent']:.3f} | {row['test_accuracy']:.4f} ± {row['test_accuracy_std']:.4f} | "
          f"{points_vs(row, acc, 'full')} | {row['validation_accuracy']:.4f} | {row['train_seconds']:.0f} | "
          f"{row['peak_memory_mb']:.0f} | {row['saved_bytes'] / 1e6:.3g} MB |" for row in r["rows"]],
        "",
        f"![accuracy against trainable parameters](peft_compare_{r['profile']}.png)" if r["png"] else "Install matplotlib for the plot of accuracy against trainable parameters; the numbers are in peft_compare.json.",
        "",
    ]  # fmt: skip
    if r["profile"] == "quick":
        lines += ["The quick profile is a smoke run of 20 steps per method: too short to test the papers' claims. The full profile does.", ""]
    elif set(acc) >= set(METHODS):
        lines += ["What the papers claim, and whether this table agrees:", "", "| claim | test on this table | agrees |", "|---|---|---|"]
        lines += [f"| {claim} | {name} | {'yes' if rule(acc) else 'no'} |" for claim, rule, name in CLAIMS]
        lines.append("")
    if len(r["runs"]) > len(r["rows"]):
        lines += ["Every run: the learning-rate grid on the first seed (validation accuracy picks the rate), then the other seeds at that rate:", "",
                  "| method | lr | seed | validation accuracy | test accuracy |", "|---|---|---|---|---|"]  # fmt: skip
        lines += [f"| {run['method']} | {run['lr']:g} | {run['seed']} | {run['validation_accuracy']:.4f} | {run['test_accuracy']:.4f} |" for run in r["runs"]]
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
