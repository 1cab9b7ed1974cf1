"""Full fine-tuning of all-MiniLM-L6-v2 on the Rotten Tomatoes sentiment set (10,568 sentences).

BERT's recipe (Devlin et al. 2019, section 4.1, appendix A.3): a linear head on BERT's pooler, every weight
trained with AdamW, linear warmup over 10% of the steps then linear decay, the best epoch on validation kept
and scored once on the test split.

    python experiments/finetune_sentiment.py --profile quick   # 5,000 sentences, 1 epoch: about 2 minutes on the 2-core CPU machine (measured: see the report's wall time)
    python experiments/finetune_sentiment.py --profile full    # all 8,454 training sentences, 3 epochs

Writes runs/finetune_sentiment_<profile>/ (the model, metrics) and experiments/results/finetune_sentiment.md;
the last line printed is the metrics as JSON.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from minitransformers.recipes import finetune
from minitransformers.text.sources import data_dir

from common import wall_time

RESULTS = Path(__file__).resolve().parent / "results"
PROFILES = {  # FinetuneConfig fields
    "quick": {"max_train_examples": 5000, "epochs": 1, "max_length": 64},
    "full": {"epochs": 3, "max_length": 128},
}


def main() -> None:
    start = time.perf_counter()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", choices=PROFILES, default="quick")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precision", default="bf16" if torch.cuda.is_available() else "fp32")
    args = parser.parse_args()

    out = Path("runs") / f"finetune_sentiment_{args.profile}"
    config = finetune.FinetuneConfig(model=str(data_dir("minilm")), data="sentiment", out=str(out), lr=5e-5, batch_size=32,
                                     device=args.device, precision=args.precision, **PROFILES[args.profile])  # fmt: skip
    metrics = finetune.run(config)

    metrics["device_name"] = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"CPU ({platform.machine()}, {torch.get_num_threads()} threads)"
    metrics["torch"] = torch.__version__
    metrics["wall_seconds"] = time.perf_counter() - start
    report = RESULTS / "finetune_sentiment.json"  # one entry per profile; the markdown is rendered from it
    runs = json.loads(report.read_text()) if report.exists() else {}
    runs[args.profile] = metrics
    RESULTS.mkdir(parents=True, exist_ok=True)
    report.write_text(json.dumps(runs, indent=2) + "\n")
    (RESULTS / "finetune_sentiment.md").write_text(render(runs))
    print(f"wrote {RESULTS / 'finetune_sentiment.md'}")
    print(json.dumps(metrics))


def render(runs: dict) -> str:
    lines = [
        "# Fine-tuning all-MiniLM-L6-v2 on Rotten Tomatoes sentiment",
        "",
        "Command: `python experiments/finetune_sentiment.py --profile PROFILE`. AdamW lr 5e-5, batch 32, linear warmup",
        "over 10% of the steps then linear decay, BERT's pooler + linear head; the test split is scored once, on the best",
        "validation checkpoint. Peak memory: CUDA `max_memory_allocated` on a GPU, the process's peak RSS on a CPU.",
        "",
        "| profile | train examples | epochs | steps | test accuracy | test macro-F1 | validation accuracy | train s | peak memory MB | device | torch |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for profile, m in sorted(runs.items()):
        lines.append(
            f"| {profile} | {m['train_examples']} | {m['epochs']:g} | {m['steps']} | {m['test_accuracy']:.4f} | {m['test_macro_f1']:.4f} | "
            f"{m['validation_accuracy']:.4f} | {m['train_seconds']:.0f} | {m['peak_memory_mb']:.0f} | {m['device_name']} | {m['torch']} |"
        )
    timed = [f"{profile} {wall_time(m['wall_seconds'])}" for profile, m in sorted(runs.items()) if "wall_seconds" in m]
    if timed:
        lines += ["", f"Wall time of the command, from start to report: {', '.join(timed)}."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
