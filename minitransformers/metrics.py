"""Evaluation metrics, in numpy: Spearman's ρ, accuracy, macro-F1, and entity-level precision / recall / F1.

Spearman's rank correlation (Spearman 1904) is Pearson's correlation of the ranks, with tied values given
the mean of the ranks they span:

    ρ = cov(rank(x), rank(y)) / (σ_rank(x) σ_rank(y))

It is the STS benchmark's metric (Cer et al. 2017, section 4; Reimers & Gurevych 2019, section 4.1).
"""

from __future__ import annotations

import re
import string
from collections import Counter

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


# --- entity-level scores for sequence labelling, as seqeval computes them -----------------------------------------
#
# CoNLL's evaluation (conlleval.pl, Tjong Kim Sang & De Meulder 2003), which seqeval reproduces in its default mode
# (mode=None, "compatible with conlleval"): an entity counts as found only when its type, first and last token all
# match a gold entity. The tag sequences are read leniently, as the script does: a chunk also starts at an I-X after
# O or after another type (a model's predictions may break IOB2). seqeval joins the sentences into one sequence with
# an O after each, and splits a tag at its first character: "B-geo-loc" is B and geo-loc, "O" is O.


def chunk_ends(prev_tag: str, tag: str, prev_type: str, type_: str) -> bool:
    """Does a chunk end between the previous token and this one? (seqeval's end_of_chunk, IOBES included)"""
    return (
        prev_tag in ("E", "S")
        or (prev_tag in ("B", "I") and tag in ("B", "S", "O"))
        or (prev_tag not in ("O", ".") and prev_type != type_)
    )


def chunk_starts(prev_tag: str, tag: str, prev_type: str, type_: str) -> bool:
    """Does a chunk start at this token? (seqeval's start_of_chunk)"""
    return (
        tag in ("B", "S")
        or (prev_tag in ("E", "S", "O") and tag in ("E", "I"))
        or (tag not in ("O", ".") and prev_type != type_)
    )


def entity_spans(sequences: list[list[str]]) -> list[tuple[str, int, int]]:
    """(type, first, last) of each entity in the tag sequences, positions counted over the sequences joined with an O
    after each, as seqeval's get_entities gives them."""
    tags = [tag for sequence in sequences for tag in [*sequence, "O"]]
    spans, prev_tag, prev_type, begin = [], "O", "", 0
    for i, chunk in enumerate([*tags, "O"]):
        tag, type_ = chunk[0], chunk[1:].split("-", maxsplit=1)[-1] or "_"
        if chunk_ends(prev_tag, tag, prev_type, type_):
            spans.append((prev_type, begin, i - 1))
        if chunk_starts(prev_tag, tag, prev_type, type_):
            begin = i
        prev_tag, prev_type = tag, type_
    return spans


def prf(correct: int, predicted: int, gold: int) -> dict[str, float]:
    """precision = correct / predicted, recall = correct / gold, F1 their harmonic mean; 0 where a denominator is 0
    (seqeval's zero_division="warn", without the warning)."""
    precision = correct / predicted if predicted else 0.0
    recall = correct / gold if gold else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1, "support": gold}


def entity_scores(gold: list[list[str]], predicted: list[list[str]]) -> dict:
    """Entity-level scores of PREDICTED tag sequences against GOLD ones, one sequence per sentence: the micro average
    over all entities ("overall", seqeval's precision_score, recall_score and f1_score) and each type's
    ("per_type", classification_report's rows), each with its support, the number of gold entities."""
    if len(gold) != len(predicted) or any(len(g) != len(p) for g, p in zip(gold, predicted)):
        raise InputError(f"entity_scores needs one predicted tag per gold tag; got {len(predicted)} predicted sequences for {len(gold)} gold ones, or lengths that differ")
    true, found = set(entity_spans(gold)), set(entity_spans(predicted))
    per_type = {}
    for type_ in sorted({t for t, _, _ in true | found}):
        t, f = {e for e in true if e[0] == type_}, {e for e in found if e[0] == type_}
        per_type[type_] = prf(len(t & f), len(f), len(t))
    return {"overall": prf(len(true & found), len(found), len(true)), "per_type": per_type}


# --- SQuAD: exact match and token F1 of extracted answers -----------------------------------------------------------
# Rajpurkar et al. 2016, section 6.1, and the official evaluation script (evaluate-v2.0.py; on non-empty answers it
# agrees with v1.1's): both strings normalised (lowercase, ASCII punctuation removed, the articles a / an / the removed,
# whitespace collapsed), then EM = 1 if equal, and F1 the harmonic mean of precision and recall of the bag of tokens
# the two share; each prediction takes its best score over its gold answers, reported as percentages. As in v2.0, an
# empty gold or predicted answer (SQuAD 2.0's "no answer") scores 1 only against another empty one.


def squad_normalize(text: str) -> str:
    """SQuAD's answer normalisation: lowercase, drop punctuation, drop the articles a, an, the; collapse whitespace."""
    text = "".join(ch for ch in text.lower() if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text, flags=re.UNICODE)
    return " ".join(text.split())


def squad_f1(prediction: str, gold: str) -> float:
    """Token F1 of one prediction against one gold answer, both normalised."""
    predicted, true = squad_normalize(prediction).split(), squad_normalize(gold).split()
    if not predicted or not true:
        return float(predicted == true)
    same = sum((Counter(predicted) & Counter(true)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(predicted), same / len(true)
    return 2 * precision * recall / (precision + recall)


def squad_scores(predictions: list[str], golds: list[list[str]]) -> dict[str, float]:
    """{"exact_match", "f1"} in percent, each prediction scored against the best of its gold answers."""
    if len(predictions) != len(golds) or not predictions:
        raise InputError(f"squad_scores needs one list of gold answers per prediction; got {len(predictions)} predictions for {len(golds)} gold lists")
    if any(not answers for answers in golds):
        raise InputError("every prediction needs at least one gold answer (give [\"\"] for a question with no answer)")
    em = [max(float(squad_normalize(p) == squad_normalize(g)) for g in answers) for p, answers in zip(predictions, golds)]
    f1 = [max(squad_f1(p, g) for g in answers) for p, answers in zip(predictions, golds)]
    return {"exact_match": 100 * sum(em) / len(em), "f1": 100 * sum(f1) / len(f1)}
