"""Entity-level precision / recall / F1 (metrics.entity_scores) equal to seqeval's default mode (conlleval's lenient
chunking, micro average, per type), on random tag sequences that break IOB2 in every way and on the real WNUT-16 tags
with predictions made wrong on purpose; and one worked example by hand."""

import random
import warnings

import pytest
from conftest import fetched

from minitransformers.errors import InputError
from minitransformers.metrics import entity_scores, entity_spans
from minitransformers.text.ner import load_wnut16

TAGS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-geo-loc", "I-geo-loc", "E-PER", "S-LOC", "I-", "B"]


@pytest.fixture
def seqeval():
    return pytest.importorskip("seqeval.metrics", reason="seqeval is not installed; pip install the test extra")


def assert_same_as_seqeval(seqeval, gold, predicted):
    ours = entity_scores(gold, predicted)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # seqeval warns on 0/0 and on tags that are not NE tags
        assert ours["overall"]["precision"] == pytest.approx(seqeval.precision_score(gold, predicted), abs=1e-12)
        assert ours["overall"]["recall"] == pytest.approx(seqeval.recall_score(gold, predicted), abs=1e-12)
        assert ours["overall"]["f1"] == pytest.approx(seqeval.f1_score(gold, predicted), abs=1e-12)
        if ours["per_type"]:
            report = seqeval.classification_report(gold, predicted, output_dict=True)
            assert set(ours["per_type"]) == set(report) - {"micro avg", "macro avg", "weighted avg"}
            for type_, scores in ours["per_type"].items():
                theirs = report[type_]
                assert (scores["precision"], scores["recall"], scores["f1"]) == pytest.approx((theirs["precision"], theirs["recall"], theirs["f1-score"]), abs=1e-12)
                assert scores["support"] == theirs["support"]
    return ours


def test_random_sequences_equal_seqeval(seqeval):
    rng = random.Random(0)
    for _ in range(500):
        gold = [[rng.choice(TAGS) for _ in range(rng.randint(0, 9))] for _ in range(rng.randint(1, 5))]
        predicted = [[rng.choice(TAGS) if rng.random() < 0.5 else tag for tag in sentence] for sentence in gold]
        assert_same_as_seqeval(seqeval, gold, predicted)


def test_wnut16_tags_with_wrong_predictions_equal_seqeval(seqeval):
    gold = [list(s.tags) for s in load_wnut16("validation", fetched("wnut16").parent)]
    rng = random.Random(1)
    types = sorted({t[2:] for s in gold for t in s if t != "O"})
    predicted = []
    for sentence in gold:
        row = []
        for tag in sentence:
            r = rng.random()
            row.append(tag if r < 0.7 else "O" if r < 0.8 else f"I-{rng.choice(types)}" if r < 0.9 else f"B-{rng.choice(types)}")
        predicted.append(row)
    ours = assert_same_as_seqeval(seqeval, gold, predicted)
    assert 0.1 < ours["overall"]["f1"] < 0.9 and ours["overall"]["support"] == 165
    assert entity_scores(gold, gold)["overall"]["f1"] == 1.0


def test_worked_example():
    """seqeval's docstring example: MISC found one token too early, PER found exactly."""
    gold = [["O", "O", "O", "B-MISC", "I-MISC", "I-MISC", "O"], ["B-PER", "I-PER", "O"]]
    predicted = [["O", "O", "B-MISC", "I-MISC", "I-MISC", "I-MISC", "O"], ["B-PER", "I-PER", "O"]]
    scores = entity_scores(gold, predicted)
    assert scores["overall"] == {"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2}
    assert scores["per_type"]["MISC"]["f1"] == 0.0 and scores["per_type"]["PER"]["f1"] == 1.0
    assert entity_spans([["I-PER", "I-PER", "O", "B-LOC"]]) == [("PER", 0, 1), ("LOC", 3, 3)]  # an I- after O opens a chunk


def test_lengths_must_agree():
    with pytest.raises(InputError, match="one predicted tag per gold tag"):
        entity_scores([["O", "B-PER"]], [["O"]])
