"""SQuAD's exact match and F1 (metrics.py) on cases worked out by hand from the official evaluation script's rules:
lowercase, strip ASCII punctuation, drop the articles a / an / the, collapse whitespace; F1 over the shared bag of tokens."""

import pytest

from minitransformers.errors import InputError
from minitransformers.metrics import squad_f1, squad_normalize, squad_scores


@pytest.mark.parametrize(
    "text, normalized",
    [
        ("The  Eiffel Tower!", "eiffel tower"),  # lower, "!" dropped, "the" dropped, spaces collapsed
        ("an apple, a day", "apple day"),
        ("Theater of the Absurd", "theater of absurd"),  # "the" only as a whole word
        ("Rock-n-roll", "rocknroll"),  # punctuation removed, not replaced by a space
        ("A.B.C.", "abc"),  # the dots go first, so "a" is no longer a word of its own
        ("  Hello\tWorld\n", "hello world"),
        ("The", ""),
    ],
)
def test_normalization_follows_the_official_rules(text, normalized):
    assert squad_normalize(text) == normalized


def test_f1_is_the_harmonic_mean_of_token_precision_and_recall():
    # [cat, sat] against [cat, sat, down]: 2 shared, P = 1, R = 2/3, F1 = 2·(2/3)/(5/3) = 0.8
    assert squad_f1("the cat sat", "a cat sat down") == pytest.approx(0.8, abs=1e-12)
    # bags {cat: 2, dog: 1} and {cat: 1, dog: 2} share min counts 1 + 1 = 2 of 3 each: P = R = F1 = 2/3
    assert squad_f1("cat cat dog", "cat dog dog") == pytest.approx(2 / 3, abs=1e-12)
    assert squad_f1("Paris", "London") == 0.0
    assert squad_f1("The Paris!", "paris") == 1.0


def test_an_empty_answer_matches_only_an_empty_one():
    assert squad_f1("", "") == 1.0 and squad_f1("the", "") == 1.0  # "the" normalises to nothing
    assert squad_f1("", "Paris") == 0.0 and squad_f1("Paris", "") == 0.0


def test_scores_take_the_best_gold_answer_and_are_percentages():
    # EM: "Paris" equals the gold "Paris" (1), the other two match none (0): 100/3.
    # F1: 1 (best of 2/3 against "paris, france" and 1 against "Paris"), 0.8 as above, 0: 100·1.8/3 = 60.
    scores = squad_scores(["Paris", "the cat sat", "no"], [["paris, france", "Paris"], ["a cat sat down"], ["yes"]])
    assert scores["exact_match"] == pytest.approx(100 / 3, abs=1e-9)
    assert scores["f1"] == pytest.approx(60.0, abs=1e-9)


def test_scores_refuse_mismatched_or_empty_gold_lists():
    with pytest.raises(InputError, match="one list of gold answers per prediction"):
        squad_scores(["a", "b"], [["a"]])
    with pytest.raises(InputError, match="at least one gold answer"):
        squad_scores(["a"], [[]])
