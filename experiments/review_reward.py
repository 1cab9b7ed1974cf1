"""The review sentiment classifier of issue 22: the reward model of the DPO sentiment experiment (dpo_sentiment.py,
after Rafailov et al. 2023, section 6.1, whose reward is a sentiment classifier's) and the scorer of SFT's rating
agreement (sft_reviews.py).

all-MiniLM-L6-v2 fine-tuned by recipes/finetune.py (BERT's recipe, Devlin et al. 2019, section 4.1: a linear head,
AdamW, batch 32, linear warmup and decay, the best epoch on validation kept; but the head reads the mean of the
token vectors, as the sentence encoder was trained to be read, not its untrained pooler) on
`--data reviews-sentiment`: the clothing reviews' texts, 1–2 stars negative, 4–5 positive, 3 dropped (about 12%
negative), in load_reviews' splits.

    python experiments/review_reward.py --profile quick   # 1,000 train reviews, 1 epoch at lr 2e-4, 64 tokens: about 50 s on the 2-core CPU
    python experiments/review_reward.py --profile full    # all 15,840 train reviews, 3 epochs at lr 5e-5, 128 tokens

The quick classifier is small but not degenerate: with 12% negative reviews, 500 reviews on the pooler (the earlier
quick profile) learned to call everything positive (macro-F1 0.47); 1,000 on the mean scored validation macro-F1 0.81.

Trains into runs/review_sentiment_<profile>/ once (a folder holding metrics.json is loaded, not retrained), then
prints its metrics as JSON. From another experiment:

    reward = ReviewSentiment.train_or_load("full", device)
    reward.positive_probability(["Love this dress!", "It ripped."])  # -> [0.99, 0.02]
    reward.metrics["test_accuracy"]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from minitransformers.peft.methods import load_classifier
from minitransformers.recipes import finetune
from minitransformers.text.sources import data_dir
from minitransformers.text.tokenizer import Tokenizer

from common import RUNS

PROFILES = {  # FinetuneConfig fields
    "quick": {"max_train_examples": 1000, "max_eval_examples": 200, "epochs": 1, "max_length": 64, "lr": 2e-4, "pooling": "mean"},
    "full": {"epochs": 3, "max_length": 128, "pooling": "mean"},
}


class ReviewSentiment:
    """A classifier folder written by finetune on reviews-sentiment, read as P(positive | text)."""

    def __init__(self, folder: Path, device: str = "cpu", max_length: int = 128, batch_size: int = 64):
        self.model = load_classifier(folder).to(device).eval()
        self.tokenizer = Tokenizer.from_pretrained(folder)
        self.metrics = json.loads((folder / "metrics.json").read_text())
        if "positive" not in self.model.labels:
            raise ValueError(f"{folder}: the classifier's labels are {self.model.labels}, expected 'negative' and 'positive'; is it a reviews-sentiment run?")
        self.positive = self.model.labels.index("positive")
        self.device, self.max_length, self.batch_size = device, max_length, batch_size

    @classmethod
    def train_or_load(cls, profile: str, device: str = "cpu", precision: str = "fp32") -> ReviewSentiment:
        """runs/review_sentiment_PROFILE, fine-tuned first unless it already holds a finished run (its metrics.json)."""
        out = RUNS / f"review_sentiment_{profile}"
        if not (out / "metrics.json").is_file():
            finetune.run(finetune.FinetuneConfig(model=str(data_dir("minilm")), data="reviews-sentiment", out=str(out), device=device, precision=precision, **PROFILES[profile]))
        return cls(out, device, PROFILES[profile]["max_length"])

    @torch.no_grad()
    def positive_probability(self, texts: list[str]) -> list[float]:
        """P(positive | text) for each text, in batches of `batch_size`: softmax of the classifier's logits."""
        probabilities = []
        for i in range(0, len(texts), self.batch_size):
            batch = {k: v.to(self.device) for k, v in self.tokenizer(texts[i : i + self.batch_size], max_length=self.max_length).items()}
            probabilities += self.model(**batch).float().softmax(-1)[:, self.positive].tolist()  # (B, 2) -> (B,)
        return probabilities


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", choices=PROFILES, default="quick")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precision", default="bf16" if torch.cuda.is_available() else "fp32")
    args = parser.parse_args()
    reward = ReviewSentiment.train_or_load(args.profile, args.device, args.precision)
    print(json.dumps({k: reward.metrics[k] for k in ("train_examples", "validation_accuracy", "test_accuracy", "test_macro_f1")}))


if __name__ == "__main__":
    main()
