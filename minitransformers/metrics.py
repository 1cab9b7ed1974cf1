"""Evaluation metrics, in numpy: Spearman's ρ, accuracy, macro-F1.

Spearman's rank correlation (Spearman 1904) is Pearson's correlation of the ranks, with tied values given
the mean of the ranks they span:

    ρ = cov(rank(x), rank(y)) / (σ_rank(x) σ_rank(y))

It is the STS benchmark's metric (Cer et al. 2017, section 4; Reimers & Gurevych 2019, section 4.1).
"""

from __future__ import annotations

import numpy as np

from .errors import InputError


def rankdata(x) -> np.ndarray:
    """1-based ranks; ties get the average of the ranks they occupy."""
    x = np.asarray(x, dtype=np.float64)
    order = np.argsort(x, kind="stable")
    ranks = np.empty(len(x), dtype=np.float64)
    ranks[order] = np.arange(1, len(x) + 1)
    _, group, counts = np.unique(x, return_inverse=True, return_counts=True)
    sums = np.bincount(group, weights=ranks)  # sum of the ranks inside each group of equal values
    return (sums / counts)[group]


def pearson(x, y) -> float:
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    x, y = x - x.mean(), y - y.mean()
    return float((x * y).sum() / np.sqrt((x * x).sum() * (y * y).sum()))


def spearman(x, y) -> float:
    if len(x) != len(y) or len(x) < 2:
        raise InputError(f"spearman needs two sequences of equal length >= 2, got {len(x)} and {len(y)}")
    return pearson(rankdata(x), rankdata(y))


def accuracy(predictions, labels) -> float:
    predictions, labels = np.asarray(predictions), np.asarray(labels)
    return float((predictions == labels).mean())


def macro_f1(predictions, labels, num_classes: int) -> float:
    """Mean over classes of F1 = 2·TP / (2·TP + FP + FN). A class that occurs in neither the predictions nor
    the labels is left out (its F1 is 0/0)."""
    predictions, labels = np.asarray(predictions), np.asarray(labels)
    scores = []
    for c in range(num_classes):
        tp = np.sum((predictions == c) & (labels == c))
        fp = np.sum((predictions == c) & (labels != c))
        fn = np.sum((predictions != c) & (labels == c))
        if tp + fp + fn:
            scores.append(2 * tp / (2 * tp + fp + fn))
    return float(np.mean(scores)) if scores else 0.0
