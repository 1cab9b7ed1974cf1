"""Spearman's ρ against worked examples with published values."""

import numpy as np
import pytest

from minitransformers.metrics import accuracy, macro_f1, rankdata, spearman


def test_ranks_average_ties():
    assert rankdata([10, 20, 20, 5, 20]).tolist() == [2.0, 4.0, 4.0, 1.0, 4.0]


def test_spearman_matches_the_wikipedia_worked_example():
    # IQ vs hours of TV per week, the worked example of the Wikipedia article "Spearman's rank correlation
    # coefficient": ρ = −29/165 ≈ −0.175757575.
    iq = [106, 100, 86, 101, 99, 103, 97, 113, 112, 110]
    tv = [7, 27, 2, 50, 28, 29, 20, 12, 6, 17]
    assert spearman(iq, tv) == pytest.approx(-29 / 165, abs=1e-12)


def test_spearman_is_one_for_monotone_maps_and_minus_one_reversed():
    x = np.random.default_rng(0).normal(size=200)
    assert spearman(x, np.exp(3 * x)) == pytest.approx(1.0)
    assert spearman(x, -x**3) == pytest.approx(-1.0)


def test_spearman_with_ties_equals_pearson_of_average_ranks():
    # By hand: ranks x = [1, 2.5, 2.5, 4, 5], y = [1, 3.5, 2, 3.5, 5], both of mean 3; deviations
    # [-2, -.5, -.5, 1, 2] and [-2, .5, -1, .5, 2]; Σ products = 8.75, Σ squares = 9.5 each: ρ = 35/38.
    assert spearman([1, 2, 2, 3, 4], [1, 4, 3, 4, 5]) == pytest.approx(35 / 38, abs=1e-12)


def test_spearman_refuses_mismatched_lengths():
    with pytest.raises(ValueError, match="equal length"):
        spearman([1, 2, 3], [1, 2])


def test_accuracy_and_macro_f1_by_hand():
    predictions, labels = [0, 0, 1, 1, 1, 2], [0, 1, 1, 1, 2, 2]
    assert accuracy(predictions, labels) == pytest.approx(4 / 6)
    # class 0: tp 1, fp 1, fn 0 -> 2/3; class 1: tp 2, fp 1, fn 1 -> 4/6; class 2: tp 1, fp 0, fn 1 -> 2/3
    assert macro_f1(predictions, labels, num_classes=3) == pytest.approx(2 / 3)
    assert macro_f1([1, 1], [1, 1], num_classes=2) == 1.0  # class 0 never occurs: left out
