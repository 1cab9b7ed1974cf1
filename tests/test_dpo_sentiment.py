"""The pure pieces of experiments/dpo_sentiment.py (Rafailov et al. 2023, section 6.1): best-of-N's KL and reward, the
best-against-worst pairing, the rows scored for the KL estimate, and the best-of-N frontier a DPO point is compared with."""

import math

import pytest
import torch
from conftest import load_experiment

exp = load_experiment("dpo_sentiment")


def test_best_of_n_kl_is_log_n_minus_n_minus_1_over_n():
    assert exp.best_of_n_kl(1) == 0.0
    assert exp.best_of_n_kl(2) == pytest.approx(math.log(2) - 0.5)
    assert exp.best_of_n_kl(64) == pytest.approx(4.158883 - 0.984375, abs=1e-6)


def test_best_of_n_kl_matches_the_exact_kl_of_best_of_n_over_distinct_rewards():
    """Over M equally likely outcomes of distinct reward, best-of-N picks the i-th lowest with probability
    (i/M)^N − ((i−1)/M)^N; its KL to the uniform tends to log N − (N−1)/N as M grows."""
    M, n = 100_000, 8
    i = torch.arange(1, M + 1, dtype=torch.float64)
    p = (i / M) ** n - ((i - 1) / M) ** n
    exact = (p[p > 0] * (p[p > 0] * M).log()).sum().item()
    assert exact == pytest.approx(exp.best_of_n_kl(n), abs=1e-3)


def test_best_of_n_reward_takes_the_max_of_disjoint_groups():
    rewards = torch.tensor([[0.1, 0.5, 0.3, 0.2], [0.9, 0.0, 0.4, 0.6]], dtype=torch.float64)
    assert exp.best_of_n_reward(rewards, 1).tolist() == rewards.tolist()
    assert exp.best_of_n_reward(rewards, 2).tolist() == [[0.5, 0.3], [0.9, 0.6]]
    assert exp.best_of_n_reward(rewards, 4).tolist() == [[0.5], [0.9]]


def test_pairing_picks_the_highest_as_chosen_the_lowest_as_rejected_and_drops_ties():
    assert exp.best_and_worst([0.2, 0.9, 0.1, 0.5]) == (1, 2)
    assert exp.best_and_worst([0.3, 0.3]) is None
    pairs = exp.preference_pairs(["p1", "p2"], [["a", "b", "c"], ["x", "y", "z"]], [[0.5, 0.9, 0.1], [0.4, 0.4, 0.4]])
    assert pairs == [{"prompt": "p1", "chosen": "b", "rejected": "c"}]


def test_sampled_rows_stop_after_their_first_stop_token():
    assert exp.until_stop([5, 6, 2, 2, 2], (2,)) == [5, 6, 2]
    assert exp.until_stop([5, 6, 7], (2,)) == [5, 6, 7]


def test_the_scoring_batch_marks_only_the_completion_tokens():
    batch = exp.scoring_batch([[1, 2, 3], [4]], [[7, 8], [9, 10, 11]], pad_id=0)
    assert batch["input_ids"].tolist() == [[1, 2, 3, 7, 8], [4, 9, 10, 11, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1, 1], [1, 1, 1, 1, 0]]
    assert batch["completion_mask"].tolist() == [[0, 0, 0, 1, 1], [0, 1, 1, 1, 0]]


def test_the_frontier_is_linear_between_best_of_n_points_and_flat_beyond():
    frontier = [(0.0, 0.5), (exp.best_of_n_kl(2), 0.6), (exp.best_of_n_kl(4), 0.8)]
    assert exp.frontier_reward(-0.1, frontier) == 0.5  # a KL estimate below 0 (sampling noise) meets N = 1
    assert exp.frontier_reward(exp.best_of_n_kl(2) / 2, frontier) == pytest.approx(0.55)
    assert exp.frontier_reward(5.0, frontier) == 0.8
