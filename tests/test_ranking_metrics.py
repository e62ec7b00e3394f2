"""Each offline metric against a hand-computed case."""

from __future__ import annotations

import math

import pytest

from learner.ranking_metrics import (
    category_entropy,
    discounted_positional_accuracy,
    intra_list_diversity,
    ndcg_at_k,
    position_weighted_kendall_tau,
    recall_at_k,
    weighted_agreement_score,
    weighted_mean_rank_difference,
)

LOG3 = math.log2(3)


def test_recall_at_k() -> None:
    # top-2 = {a, b}; test = {b, c, d}: 1 of 3
    assert recall_at_k(["a", "b", "c"], {"b", "c", "d"}, 2) == pytest.approx(1 / 3)
    assert recall_at_k(["a", "b", "c"], {"b", "c", "d"}, 3) == pytest.approx(2 / 3)
    assert recall_at_k(["a"], set(), 20) == 0.0


def test_ndcg_at_k() -> None:
    # hits at positions 2 and 3: DCG = 1/log2(3) + 1/2; IDCG over 2 positions = 1 + 1/log2(3)
    ndcg = ndcg_at_k(["a", "b", "c"], {"b", "c"}, 100)
    assert ndcg == pytest.approx((1 / LOG3 + 0.5) / (1 + 1 / LOG3))
    assert ndcg_at_k(["b", "c", "a"], {"b", "c"}, 100) == pytest.approx(1.0)
    # IDCG is cut at K: one relevant item at position 1 of a K = 1 list is perfect.
    assert ndcg_at_k(["b"], {"b", "c"}, 1) == pytest.approx(1.0)


def test_discounted_positional_accuracy() -> None:
    # matches at positions 1 and 3 of 3: (1 + 1/2) / (1 + 1/log2(3) + 1/2)
    dpa = discounted_positional_accuracy(["a", "x", "c"], ["a", "b", "c"])
    assert dpa == pytest.approx(1.5 / (1.5 + 1 / LOG3))
    assert discounted_positional_accuracy(["a", "b"], ["a", "b"]) == 1.0


def test_weighted_agreement_score() -> None:
    # generated [b, a, c] vs golden [a, b, c]: A_1 = 0, A_2 = 1, A_3 = 1; q = 0.5
    # (0 * 1 + 1 * 0.5 + 1 * 0.25) / (1 + 0.5 + 0.25)
    was = weighted_agreement_score(["b", "a", "c"], ["a", "b", "c"], persistence=0.5)
    assert was == pytest.approx(0.75 / 1.75)
    assert weighted_agreement_score(["a", "b"], ["a", "b"]) == 1.0
    assert weighted_agreement_score(["x", "y"], ["a", "b"]) == 0.0


def test_position_weighted_kendall_tau() -> None:
    # golden [a, b, c], generated [a, c, b]: pairs (a,b) +1 w=1, (a,c) +1 w=1,
    # (b,c) -1 w=1/log2(3): (2 - 1/log2(3)) / (2 + 1/log2(3))
    tau = position_weighted_kendall_tau(["a", "c", "b"], ["a", "b", "c"])
    assert tau == pytest.approx((2 - 1 / LOG3) / (2 + 1 / LOG3))
    assert position_weighted_kendall_tau(["c", "b", "a"], ["a", "b", "c"]) == -1.0
    assert position_weighted_kendall_tau(["a", "x"], ["a", "b"]) == 0.0  # one common item


def test_weighted_mean_rank_difference() -> None:
    # golden [a, b], generated [b, x]: a missing (rank 3, |3-1| = 2, w = 1), b at 1 (|1-2| = 1,
    # w = 1/log2(3)): (2 + 1/log2(3)) / (1 + 1/log2(3))
    wmrd = weighted_mean_rank_difference(["b", "x"], ["a", "b"])
    assert wmrd == pytest.approx((2 + 1 / LOG3) / (1 + 1 / LOG3))
    assert weighted_mean_rank_difference(["a", "b"], ["a", "b"]) == 0.0


def test_intra_list_diversity_and_category_entropy() -> None:
    category = {"a": "toys", "b": "toys", "c": "books", "d": "games"}
    # pairs: ab same, ac ad bc bd cd different: 5 / 6
    assert intra_list_diversity(["a", "b", "c", "d"], category) == pytest.approx(5 / 6)
    # shares 1/2, 1/4, 1/4: 0.5 + 0.5 + 0.5 = 1.5 bits
    assert category_entropy(["a", "b", "c", "d"], category) == pytest.approx(1.5)
    assert intra_list_diversity(["a", "b"], category) == 0.0
    assert category_entropy(["a", "b"], category) == 0.0
