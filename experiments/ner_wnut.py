"""Named-entity recognition on WNUT-16 tweets: all-MiniLM-L6-v2 fine-tuned in full and with LoRA, entity F1 per type.

    python experiments/ner_wnut.py --profile quick   # 500 training tweets, 2 epochs per method, on the CPU: about a minute on the 2-core machine (measured: see the report's wall time)
    python experiments/ner_wnut.py --profile full    # meant for a GPU: all 1,908 training tweets, 10 epochs, an lr grid, 3 seeds

Data: the 2,394 tweets of WNUT-16's NER training set (Strauss et al. 2016; `fetch wnut16`), 10 entity types, cut into
our own seeded train / validation / test split (text/ner.py: 1,908 / 258 / 228 tweets). The split is ours, so the
numbers do not compare with published WNUT-16 test-set results; for context only, BERTweet (Nguyen et al. 2020)
reports 52.1 entity F1 on WNUT-16's own test set.

Each run is `ner` (recipes/ner.py): a linear head on each word's first sub-word, AdamW with warmup and linear decay,
batch 16 (8 in the quick profile), the best epoch by validation entity F1 scored on the test split, with entity
precision, recall and F1 as seqeval computes them (metrics.entity_scores). LoRA: r = 8, α = 16 on query and value,
the head in full. The full profile tries three learning rates per method on seed 0, keeps the best by validation F1
and runs it on two more seeds; the tables give the mean over seeds. The quick profile runs one rate per method (the
largest of its grid) on one seed, on 500 tweets for two epochs: a smoke run, far too short to learn the rare types
(most of its per-type F1 is 0, and its LoRA run still tags almost every word O).

Writes runs/ner_wnut_<profile>/ and experiments/results/ner_wnut.{json,md} (one entry per profile); the last line
printed is JSON.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from minitransformers.recipes import ner
from minitransformers.text.ner import WNUT16_TYPES
from minitransformers.text.sources import data_dir

from common import device_name, flags, reference_name, wall_time

RESULTS = Path(__file__).resolve().parent / "results"
METHODS = ("full", "lora")
LR_GRID = {  # the last rate runs in the quick profile
    "full": [5e-5, 1e-4, 2e-4],  # Devlin et al.: 2e-5 to 5e-5 for BERT-base; a 6-layer, 384-wide model takes larger steps
    "lora": [5e-4, 1e-3, 2e-3],  # Hu et al., RoBERTa-base on GLUE: 4e-4 to 5e-4
}
PROFILES = {  # "ner": NERConfig fields
    "quick": {"lrs": slice(2, 3), "seeds": [0], "ner": {"max_train_examples": 500, "epochs": 2, "batch_size": 8, "max_length": 64}},
    "full": {"lrs": slice(0, 3), "seeds": [0, 1, 2], "ner": {"epochs": 10, "batch_size": 16, "max_length": 128}},
}
KEPT = ("validation_f1", "test_f1", "test_precision", "test_recall", "test_accuracy", "test_per_type", "trainable_parameters", "total_parameters", "train_seconds", "steps")


def train(root: Path, base: Path, jobs: list[tuple[str, float, int]], args) -> list[dict]:
    """`ner` from `base` for each (method, lr, seed), one after another; -> one row of KEPT metrics per job."""
    rows = []
    for method, lr, seed in jobs:
        config = ner.NERConfig(model=str(base), data="wnut16", out=str(root / f"{method}_lr{lr:g}_seed{seed}"), method=method, lr=lr, seed=seed,
                               device=args.device, precision=args.precision, **PROFILES[args.profile]["ner"])  # fmt: skip
        metrics = ner.run(config)
        rows.append({"method": method, "lr": lr, "seed": seed, **{k: metrics[k] for k in KEPT}})
    return rows


def mean_over_seeds(runs: list[dict], chosen: dict) -> dict:
    """The chosen run's row, with its test scores (overall and per type) the mean over every seed at its rate."""
    seeded = [r for r in runs if r["method"] == chosen["method"] and r["lr"] == chosen["lr"]]
    mean = lambda values: sum(values) / len(values)  # noqa: E731
    f1 = torch.tensor([r["test_f1"] for r in seeded], dtype=torch.float64)
    per_type = {t: {"f1": mean([r["test_per_type"].get(t, {}).get("f1", 0.0) for r in seeded]), "support": chosen["test_per_type"].get(t, {}).get("support", 0)} for t in WNUT16_TYPES}
    return {**chosen, "test_f1": f1.mean().item(), "test_f1_std": f1.std().item() if len(seeded) > 1 else 0.0, "test_f1_per_seed": f1.tolist(),
            "test_precision": mean([r["test_precision"] for r in seeded]), "test_recall": mean([r["test_recall"] for r in seeded]),
            "test_per_type": per_type, "train_seconds": mean([r["train_seconds"] for r in seeded])}  # fmt: skip


def main() -> None:
    start = time.perf_counter()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", choices=PROFILES, default="quick")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precision", default="bf16" if torch.cuda.is_available() else "fp32")
    args = parser.parse_args()
    profile, root, base = PROFILES[args.profile], Path("runs") / f"ner_wnut_{args.profile}", data_dir("minilm")
    data_dir("wnut16")  # fetched, or say how to fetch it before any run starts

    first, *more = profile["seeds"]
    runs = train(root, base, [(method, lr, first) for method in METHODS for lr in LR_GRID[method][profile["lrs"]]], args)
    chosen = {method: max((r for r in runs if r["method"] == method), key=lambda r: r["validation_f1"]) for method in METHODS}
    runs += train(root, base, [(method, chosen[method]["lr"], seed) for method in METHODS for seed in more], args)
    rows = [mean_over_seeds(runs, chosen[method]) for method in METHODS]

    report = {"profile": args.profile, "model": reference_name(base), "ner_args": flags(profile["ner"]), "rows": rows, "runs": runs,
              "device_name": device_name(args.device), "torch": torch.__version__, "command": f"python experiments/ner_wnut.py --profile {args.profile}"}  # fmt: skip
    report["wall_seconds"] = time.perf_counter() - start
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / "ner_wnut.json"  # one entry per profile; the markdown is rendered from it
    reports = {**(json.loads(path.read_text()) if path.exists() else {}), args.profile: report}
    path.write_text(json.dumps(reports, indent=2) + "\n")
    (RESULTS / "ner_wnut.md").write_text("\n".join(render(reports[k]) for k in sorted(reports)))
    print(f"wrote {RESULTS / 'ner_wnut.md'}")
    print(json.dumps({row["method"]: {"test_f1": row["test_f1"], **{t: s["f1"] for t, s in row["test_per_type"].items()}} for row in rows}))


def render(r: dict) -> str:
    rows = {row["method"]: row for row in r["rows"]}
    seeds = len({run["seed"] for run in r["runs"]})
    lines = [
        f"# NER on WNUT-16 tweets, {r['profile']} profile: {r['model']}, full fine-tuning and LoRA",
        "",
        f"Command: `{r['command']}`; device {r['device_name']}, torch {r['torch']}; wall time {wall_time(r['wall_seconds'])}.",
        f"Every run: `ner --data wnut16 {' '.join(r['ner_args'])}` at its method's learning rate "
        + ("(quick: one rate per method, one seed)." if r["profile"] == "quick" else f"(the best of its grid by validation entity F1 on seed 0; the mean of {seeds} seeds at that rate)."),
        "Data: WNUT-16's 2,394 training tweets in our own seeded split (train 1,908 / validation 258 / test 228 tweets; 157 test entities), "
        "so these numbers do not compare with published WNUT-16 test-set scores (BERTweet: 52.1 F1 on WNUT-16's own test set). "
        "Entity precision, recall and F1 as seqeval computes them (default mode, micro average). LoRA: r = 8, α = 16 on query and value; the head trains in full.",
        "",
        "| method | lr | trainable params | test entity F1 | precision | recall | validation F1 | train s |",
        "|---|---|---|---|---|---|---|---|",
        *[f"| {row['method']} | {row['lr']:g} | {row['trainable_parameters']:,} | {row['test_f1']:.4f}" + (f" ± {row['test_f1_std']:.4f}" if seeds > 1 else "")
          + f" | {row['test_precision']:.4f} | {row['test_recall']:.4f} | {row['validation_f1']:.4f} | {row['train_seconds']:.0f} |" for row in r["rows"]],
        "",
        "Test entity F1 per type (support: gold entities of the type in the test split):",
        "",
        "| type | support | " + " | ".join(rows) + " |",
        "|---|---|" + "---|" * len(rows),
        *[f"| {t} | {next(iter(rows.values()))['test_per_type'][t]['support']} | " + " | ".join(f"{row['test_per_type'][t]['f1']:.3f}" for row in rows.values()) + " |" for t in WNUT16_TYPES],
        "",
    ]  # fmt: skip
    if r["profile"] == "quick":
        lines += ["The quick profile is a smoke run (500 tweets, two epochs): too short to learn the rare types, so most of its per-type F1 is 0. The full profile gives the numbers.", ""]
    if len(r["runs"]) > len(r["rows"]):
        lines += ["Every run:", "", "| method | lr | seed | validation F1 | test F1 |", "|---|---|---|---|---|"]
        lines += [f"| {run['method']} | {run['lr']:g} | {run['seed']} | {run['validation_f1']:.4f} | {run['test_f1']:.4f} |" for run in r["runs"]]
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
