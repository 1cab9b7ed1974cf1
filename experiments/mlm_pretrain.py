"""Does pretraining help? MLM pretraining from scratch on WikiText-2, then sentiment fine-tuning three ways.

1. Pretrain the `small` encoder (4 layers × 256) with masked language modeling (Devlin et al. 2019, §3.1).
2. Record the training and validation MLM loss (JSON; a PNG too when matplotlib is installed) beside the
   unigram entropy of the tokenizer's vocabulary on WikiText-2: the loss of a model that ignores context.
3. Fine-tune on the Rotten Tomatoes sentiment set from (a) our pretrained encoder, (b) the same architecture
   at random initialisation, (c) all-MiniLM-L6-v2 for reference. The same recipe for all three, with mean
   pooling: MLM alone (no next-sentence prediction here) gives [CLS] no objective of its own, so its state
   says little about the sentence, while every token's state is trained.

    python experiments/mlm_pretrain.py --profile quick   # a smoke run: about 3 minutes on the 2-core CPU machine (measured: see the report's wall time)
    python experiments/mlm_pretrain.py --profile full    # longer pretraining, meant for a GPU

The full profile fine-tunes each starting point with 3 seeds, on all the labelled examples and on 1000 of
them (pretraining is expected to matter most when labels are few). The quick profile pretrains 100 steps,
validated once at the end on the first 256 validation sequences, and fine-tunes each starting point once on 1000 of them, scoring the first 300
validation and test sentences. On CUDA the fine-tuning runs go in parallel processes: a 5M-parameter model
leaves the GPU mostly idle, and each run is bound by its Python loop.

Writes runs/mlm_pretrain_<profile>/ and experiments/results/mlm_pretrain.{json,md} (a section per profile); the last
line printed is JSON.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from minitransformers.config import EncoderConfig
from minitransformers.model import Encoder
from minitransformers.recipes import finetune, pretrain
from minitransformers.text.sources import data_dir, is_fetched
from minitransformers.text.tokenizer import Tokenizer

from common import device_name, flags, reference_name, run_all, scored_on, wall_time

RESULTS = Path(__file__).resolve().parent / "results"
FINETUNE = {"pooling": "mean", "lr": 1e-4}  # a small encoder takes a larger step than BERT-base's 2e-5 to 5e-5
PROFILES = {  # "evals": validation passes over the pretraining (the curve's points), each on the first "eval_sequences" (0: all); "finetune": FinetuneConfig fields
    "quick": {"steps": 100, "batch": 32, "evals": 1, "eval_sequences": 256, "seeds": [0], "train_examples": [1000],
              "finetune": {**FINETUNE, "epochs": 1, "max_length": 64, "max_eval_examples": 300}},
    "full": {"steps": 16000, "batch": 128, "evals": 5, "eval_sequences": 0, "seeds": [0, 1, 2], "train_examples": [0, 1000], "finetune": {**FINETUNE, "epochs": 3, "max_length": 128}},
}


def curves(run: Path) -> dict[str, list]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return {
        "train": binned([[r["step"], r["loss"]] for r in rows if "loss" in r]),
        "validation": [[r["step"], r["validation_loss"]] for r in rows if "validation_loss" in r],
    }


def binned(points: list[list[float]], bins: int = 200) -> list[list[float]]:
    """The training loss averaged over `bins` windows of consecutive steps ([last step, mean loss] each): the
    curve's shape with less noise, in a JSON of kilobytes rather than one row per step."""
    width = max(1, len(points) // bins)
    windows = [points[i : i + width] for i in range(0, len(points), width)]
    return [[w[-1][0], sum(loss for _, loss in w) / len(w)] for w in windows]


def plot(loss: dict, entropy: float, path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, points in loss.items():
        ax.plot(*zip(*points), label=f"{name} MLM loss", marker="o" if name == "validation" else None)
    ax.axhline(entropy, color="gray", linestyle="--", label="unigram entropy")
    ax.set(xlabel="step", ylabel="loss (nats)", title="MLM pretraining on WikiText-2")
    ax.legend()
    fig.savefig(path, dpi=120, bbox_inches="tight")
    return True


def main() -> None:
    start = time.perf_counter()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", choices=PROFILES, default="quick")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precision", default="bf16" if torch.cuda.is_available() else "fp32")
    parser.add_argument("--pretrained", type=Path, help="reuse this finished `pretrain` run folder instead of pretraining again")
    parser.add_argument("--seeds", type=int, nargs="+", help="fine-tuning seeds (default: the profile's)")
    args = parser.parse_args()
    profile, root = PROFILES[args.profile], Path("runs") / f"mlm_pretrain_{args.profile}"
    common = {"device": args.device, "precision": args.precision}

    mlm = args.pretrained or root / "mlm"
    if args.pretrained:
        pretrained = json.loads((mlm / "metrics.json").read_text())
    else:
        pretrained = pretrain.run(pretrain.PretrainConfig(size="small", steps=profile["steps"], batch_size=profile["batch"],
                                                          eval_every=max(1, profile["steps"] // profile["evals"]), max_eval_sequences=profile["eval_sequences"],
                                                          out=str(mlm), **common))  # fmt: skip
    loss = curves(mlm)
    random_init = root / "random_init"  # the same architecture and tokenizer, never trained
    torch.manual_seed(0)
    Encoder(EncoderConfig.from_json(mlm / "config.json"), add_pooler=False).save_pretrained(random_init)
    Tokenizer.from_pretrained(mlm).save_pretrained(random_init)

    starts = [("pretrained here (MLM)", mlm), ("random initialisation", random_init)]
    if is_fetched("minilm"):  # the reference row; its 90 MB do not travel to every machine
        starts.append((reference_name(data_dir("minilm")), data_dir("minilm")))
    seeds = args.seeds or profile["seeds"]  # a seed draws the head, the data order and dropout
    jobs = [  # (start, labelled examples, seed) -> finetune's config
        ((name, n, seed), finetune.FinetuneConfig(model=str(model), data="sentiment", out=str(root / f"ft_{model.name}_n{n}_seed{seed}"),
                                                  seed=seed, max_train_examples=n, **common, **profile["finetune"]))
        for name, model in starts for n in profile["train_examples"] for seed in seeds
    ]  # fmt: skip
    results = dict(zip((key for key, _ in jobs), run_all([config for _, config in jobs], len(jobs) if args.device.startswith("cuda") else 1)))
    rows = []
    for name, _ in starts:
        for n in profile["train_examples"]:
            runs = [results[name, n, seed] for seed in seeds]
            test = torch.tensor([r["test_accuracy"] for r in runs], dtype=torch.float64)
            rows.append({"start": name, "train_examples": runs[0]["train_examples"], "test_accuracy": test.mean().item(),
                         "test_accuracy_std": test.std().item() if len(runs) > 1 else 0.0, "test_accuracy_per_seed": test.tolist(),
                         "validation_accuracy": sum(r["validation_accuracy"] for r in runs) / len(runs)})  # fmt: skip

    device = device_name(args.device)
    report = {"profile": args.profile, "pretrained_from": str(args.pretrained) if args.pretrained else None, "finetune_args": flags(profile["finetune"]), "pretraining": pretrained, "eval_sequences": profile["eval_sequences"], "loss": loss, "finetune": rows, "device_name": device, "torch": torch.__version__}
    RESULTS.mkdir(parents=True, exist_ok=True)
    report["png"] = plot(loss, pretrained["unigram_entropy"], RESULTS / f"mlm_pretrain_{args.profile}.png")
    report["wall_seconds"] = time.perf_counter() - start
    path = RESULTS / "mlm_pretrain.json"  # one entry per profile; the markdown is rendered from it
    reports = {**(json.loads(path.read_text()) if path.exists() else {}), args.profile: report}
    path.write_text(json.dumps(reports, indent=2) + "\n")
    (RESULTS / "mlm_pretrain.md").write_text("\n".join(render(reports[k]) for k in sorted(reports)))
    print(f"validation MLM loss {pretrained['validation_loss']:.3f} nats; unigram entropy {pretrained['unigram_entropy']:.3f} nats")
    print(json.dumps(report["finetune"]))


def render(r: dict) -> str:
    p = r["pretraining"]
    lines = [
        f"# MLM pretraining on WikiText-2, {r['profile']} profile: does it help?",
        "",
        f"Command: `python experiments/mlm_pretrain.py --profile {r['profile']}`; device {r['device_name']}, torch {r['torch']}"
        + (f"; wall time {wall_time(r['wall_seconds'])}" if "wall_seconds" in r else "")
        + (f"; pretraining reused from `{r['pretrained_from']}` (its own run, same profile)." if r.get("pretrained_from") else "."),
        f"Pretraining: `small` encoder ({p['parameters']:,} parameters), vocabulary {p['vocab_size']}, {p['train_sequences']} sequences of "
        f"{p['seq_length']} tokens, {p['steps']} steps, {p['train_seconds']:.0f} s" + (", validated once, at the end" if len(r["loss"]["validation"]) == 1 else "")
        + (f", on the first {r['eval_sequences']} validation sequences." if r.get("eval_sequences") else "."),
        "",
        "| validation MLM loss (nats) | unigram entropy (nats) | masked-token accuracy | perplexity |",
        "|---|---|---|---|",
        f"| {p['validation_loss']:.3f} | {p['unigram_entropy']:.3f} | {p['validation_accuracy']:.4f} | {p['validation_perplexity']:.1f} |",
        "",
        f"Sentiment fine-tuning, the same recipe for all three: `finetune {' '.join(r.get('finetune_args', ['--pooling', 'cls']))}`"
        + (f"; each run scores {scored_on(r['finetune_args'])}." if "--max-eval-examples" in r.get("finetune_args", []) else "."),
        "",
        "| starting point | labelled examples | test accuracy (mean ± std over seeds) | per seed | validation accuracy (mean) |",
        "|---|---|---|---|---|",
        *[f"| {row['start']} | {row['train_examples']} | {row['test_accuracy']:.4f} ± {row['test_accuracy_std']:.4f} "
          f"| {', '.join(f'{a:.4f}' for a in row['test_accuracy_per_seed'])} | {row['validation_accuracy']:.4f} |" for row in r["finetune"]],
        "",
        f"![MLM loss](mlm_pretrain_{r['profile']}.png)" if r["png"] else "The loss curves are in mlm_pretrain.json (install matplotlib for the plot).",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
