"""Does pretraining help? MLM pretraining from scratch on WikiText-2, then sentiment fine-tuning three ways.

1. Pretrain the `small` encoder (4 layers × 256) with masked language modeling (Devlin et al. 2019, §3.1).
2. Record the training and validation MLM loss (JSON; a PNG too when matplotlib is installed) beside the
   unigram entropy of the tokenizer's vocabulary on WikiText-2: the loss of a model that ignores context.
3. Fine-tune on the Rotten Tomatoes sentiment set from (a) our pretrained encoder, (b) the same architecture
   at random initialisation, (c) all-MiniLM-L6-v2 for reference; CLS pooling for all three.

    python experiments/mlm_pretrain.py --profile quick   # about 5 minutes on a 2-core CPU: a smoke run
    python experiments/mlm_pretrain.py --profile full    # longer pretraining, meant for a GPU

Writes runs/mlm_pretrain_<profile>/ and experiments/results/mlm_pretrain.{json,md} (a section per profile); the last
line printed is JSON.
"""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

import torch

from minitransformers.cli import build_parser
from minitransformers.config import EncoderConfig
from minitransformers.model import Encoder
from minitransformers.text.sources import data_dir, is_fetched
from minitransformers.text.tokenizer import Tokenizer
from minitransformers.train.finetune import finetune
from minitransformers.train.pretrain import pretrain

RESULTS = Path(__file__).resolve().parent / "results"
PROFILES = {
    "quick": {"steps": 150, "batch": 32, "finetune": ["--max-train-examples", "2000", "--epochs", "1", "--max-length", "64"]},
    "full": {"steps": 6000, "batch": 128, "finetune": ["--epochs", "3", "--max-length", "128"]},
}


def curves(run: Path) -> dict[str, list]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return {
        "train": [[r["step"], r["loss"]] for r in rows if "loss" in r],
        "validation": [[r["step"], r["validation_loss"]] for r in rows if "validation_loss" in r],
    }


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
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", choices=PROFILES, default="quick")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precision", default="bf16" if torch.cuda.is_available() else "fp32")
    args = parser.parse_args()
    profile, root = PROFILES[args.profile], Path("runs") / f"mlm_pretrain_{args.profile}"
    common = ["--device", args.device, "--precision", args.precision]

    mlm = root / "mlm"
    pretrained = pretrain(build_parser().parse_args(["pretrain", "--size", "small", "--steps", str(profile["steps"]), "--batch-size", str(profile["batch"]),
                                                    "--eval-every", str(max(1, profile["steps"] // 5)), "--out", str(mlm), *common]))  # fmt: skip
    loss = curves(mlm)
    random_init = root / "random_init"  # the same architecture and tokenizer, never trained
    torch.manual_seed(0)
    Encoder(EncoderConfig.from_json(mlm / "config.json"), add_pooler=False).save_pretrained(random_init)
    Tokenizer.from_pretrained(mlm).save_pretrained(random_init)

    starts = [("pretrained here (MLM)", mlm), ("random initialisation", random_init)]
    if is_fetched("minilm"):  # the reference row; its 90 MB do not travel to every machine
        starts.append(("all-MiniLM-L6-v2", data_dir("minilm")))
    rows = []
    for name, model in starts:
        argv = ["finetune", "--model", str(model), "--data", "sentiment", "--out", str(root / f"ft_{model.name}"), "--pooling", "cls", *common, *profile["finetune"]]
        metrics = finetune(build_parser().parse_args(argv))
        rows.append({"start": name, "test_accuracy": metrics["test_accuracy"], "validation_accuracy": metrics["validation_accuracy"]})

    device = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"CPU ({platform.machine()}, {torch.get_num_threads()} threads)"
    report = {"profile": args.profile, "pretraining": pretrained, "loss": loss, "finetune": rows, "device_name": device, "torch": torch.__version__}
    RESULTS.mkdir(parents=True, exist_ok=True)
    report["png"] = plot(loss, pretrained["unigram_entropy"], RESULTS / f"mlm_pretrain_{args.profile}.png")
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
        f"Command: `python experiments/mlm_pretrain.py --profile {r['profile']}`; device {r['device_name']}, torch {r['torch']}.",
        f"Pretraining: `small` encoder ({p['parameters']:,} parameters), vocabulary {p['vocab_size']}, {p['train_sequences']} sequences of "
        f"{p['seq_length']} tokens, {p['steps']} steps, {p['train_seconds']:.0f} s.",
        "",
        "| validation MLM loss (nats) | unigram entropy (nats) | masked-token accuracy | perplexity |",
        "|---|---|---|---|",
        f"| {p['validation_loss']:.3f} | {p['unigram_entropy']:.3f} | {p['validation_accuracy']:.4f} | {p['validation_perplexity']:.1f} |",
        "",
        "Sentiment fine-tuning (CLS pooling, the same recipe for all three):",
        "",
        "| starting point | test accuracy | validation accuracy |",
        "|---|---|---|",
        *[f"| {row['start']} | {row['test_accuracy']:.4f} | {row['validation_accuracy']:.4f} |" for row in r["finetune"]],
        "",
        f"![MLM loss](mlm_pretrain_{r['profile']}.png)" if r["png"] else "The loss curves are in mlm_pretrain.json (install matplotlib for the plot).",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
