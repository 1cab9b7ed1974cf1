"""What the trainer optimises and how it scores, per task. The trainer itself knows neither.

A task gives the *sum* of the loss over a batch and the number of terms in that sum, so that the trainer can
divide by the number of terms in the whole optimizer step (all micro-batches, all processes) and get the
exact mean whatever the batch split: Σ_processes Σ_micro-batches loss_sum / N_step.

DPO's task, which needs a reference model beside the policy, has its own file: dpo.py.
"""

from __future__ import annotations

import math
from typing import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from ..metrics import accuracy, entity_scores, macro_f1
from ..text.ner import word_tags


class Classification:
    """Sequence classification with cross-entropy, scored by loss, accuracy and macro-F1."""

    metrics = ("loss", "accuracy", "macro_f1")

    def __init__(self, num_labels: int):
        self.num_labels = num_labels

    @staticmethod
    def inputs(batch: dict) -> dict:
        return {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids")}

    def count(self, batch: dict) -> int:
        return batch["labels"].numel()

    def loss_sum(self, model: nn.Module, batch: dict) -> torch.Tensor:
        logits = model(**self.inputs(batch))  # (B, num_labels)
        return F.cross_entropy(logits.float(), batch["labels"], reduction="sum")

    @torch.no_grad()
    def evaluate(self, model: nn.Module, batches: Iterable[dict]) -> dict[str, float]:
        total, predictions, labels = 0.0, [], []
        for batch in batches:
            logits = model(**self.inputs(batch)).float()
            total += F.cross_entropy(logits, batch["labels"], reduction="sum").item()
            predictions += logits.argmax(-1).tolist()
            labels += batch["labels"].tolist()
        return {
            "loss": total / max(1, len(labels)),
            "accuracy": accuracy(predictions, labels),
            "macro_f1": macro_f1(predictions, labels, self.num_labels),
        }


class TokenClassification:
    """Token classification for NER (Devlin et al. 2019, section 5.3): cross-entropy of each word's tag at its first
    sub-word (labels ≠ -100; text/ner.py aligns them), scored by that loss, the accuracy of those tags, and
    entity-level precision, recall and F1 of the tags decoded back to words, as seqeval computes them
    (metrics.entity_scores): overall (micro) and per entity type."""

    metrics = ("loss", "accuracy", "precision", "recall", "f1")

    def __init__(self, labels: list[str]):
        self.labels = list(labels)

    @staticmethod
    def inputs(batch: dict) -> dict:
        return {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids")}

    def count(self, batch: dict) -> int:
        return int((batch["labels"] != -100).sum())

    def loss_sum(self, model: nn.Module, batch: dict) -> torch.Tensor:
        logits = model(**self.inputs(batch))  # (B, T, num_labels)
        return F.cross_entropy(logits.flatten(0, 1).float(), batch["labels"].flatten(), ignore_index=-100, reduction="sum")

    @torch.no_grad()
    def evaluate(self, model: nn.Module, batches: Iterable[dict]) -> dict:
        total, gold, predicted = 0.0, [], []
        for batch in batches:
            logits = model(**self.inputs(batch)).float()  # (B, T, num_labels)
            total += F.cross_entropy(logits.flatten(0, 1), batch["labels"].flatten(), ignore_index=-100, reduction="sum").item()
            g, p = word_tags(batch["labels"].cpu(), logits.argmax(-1).cpu(), self.labels)  # one tag a word, per sentence
            gold += g
            predicted += p
        n = sum(map(len, gold))
        scores = entity_scores(gold, predicted)
        correct = sum(a == b for g, p in zip(gold, predicted) for a, b in zip(g, p))
        return {"loss": total / max(1, n), "accuracy": correct / max(1, n), **scores["overall"], "per_type": scores["per_type"]}


class MaskedLanguageModeling:
    """BERT's MLM objective (Devlin et al. 2019, section 3.1): cross-entropy of the original token at the
    selected positions only (labels ≠ -100), scored by loss, masked-token accuracy and perplexity exp(loss)."""

    metrics = ("loss", "accuracy", "perplexity")

    @staticmethod
    def inputs(batch: dict) -> dict:
        return {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids")}

    def count(self, batch: dict) -> int:
        return int((batch["labels"] != -100).sum())

    def logits_and_targets(self, model: nn.Module, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        selected = batch["labels"] != -100  # (B, T)
        logits = model(**self.inputs(batch), positions=selected)  # (N, V): the vocabulary projection only where it counts
        return logits.float(), batch["labels"][selected]  # (N, V), (N,)

    def loss_sum(self, model: nn.Module, batch: dict) -> torch.Tensor:
        return F.cross_entropy(*self.logits_and_targets(model, batch), reduction="sum")

    @torch.no_grad()
    def evaluate(self, model: nn.Module, batches: Iterable[dict]) -> dict[str, float]:
        total, correct, n = 0.0, 0, 0
        for batch in batches:
            logits, targets = self.logits_and_targets(model, batch)
            total += F.cross_entropy(logits, targets, reduction="sum").item()
            correct += int((logits.argmax(-1) == targets).sum())
            n += targets.numel()
        loss = total / max(1, n)
        return {"loss": loss, "accuracy": correct / max(1, n), "perplexity": math.exp(min(loss, 50.0))}


class SupervisedFineTuning:
    """SFT of a causal LM (InstructGPT, Ouyang et al. 2022, section 3.5; text/sft.py makes the labels): next-token
    cross-entropy, the logits at position t scored against labels[t + 1], summed over the labels that are not -100
    (the responses, or every token). Scored by that loss, per label token, and its perplexity exp(loss), as TRL's
    SFTTrainer computes them (sum / number of label tokens; tests/test_sft.py holds the two equal)."""

    metrics = ("loss", "perplexity")

    @staticmethod
    def inputs(batch: dict) -> dict:
        return {k: batch[k] for k in ("input_ids", "attention_mask", "position_ids")}

    def count(self, batch: dict) -> int:
        return int((batch["labels"][:, 1:] != -100).sum())

    def loss_sum(self, model: nn.Module, batch: dict) -> torch.Tensor:
        logits = model(**self.inputs(batch))[:, :-1]  # (B, T - 1, V): position t predicts token t + 1
        return F.cross_entropy(logits.flatten(0, 1).float(), batch["labels"][:, 1:].flatten(), ignore_index=-100, reduction="sum")

    @torch.no_grad()
    def evaluate(self, model: nn.Module, batches: Iterable[dict]) -> dict[str, float]:
        total, n = 0.0, 0
        for batch in batches:
            total += self.loss_sum(model, batch).item()
            n += self.count(batch)
        loss = total / max(1, n)
        return {"loss": loss, "perplexity": math.exp(min(loss, 50.0)), "tokens": n}
