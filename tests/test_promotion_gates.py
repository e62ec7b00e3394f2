"""The promotion gates against hand-computed cases."""

from __future__ import annotations

import math

import pytest

from learner.promotion_gates import (
    GateSettings,
    absolute_floor,
    accuracy_difference_se,
    check_gates,
    relative_floor,
)

PRODUCTION = {
    "ndcg@100": 0.20,
    "recall@20": 0.30,
    "kl_to_reference": 0.5,
    "pair_accuracy_np": 0.90,
    "pairs_np": 1000.0,
    "pair_accuracy_rk": 0.60,
    "pairs_rk": 1000.0,
}
SETTINGS = GateSettings(relevance_tolerance=0.05, pair_accuracy_tolerance=0.05, max_kl=2.0)


def test_floors_by_hand() -> None:
    assert relative_floor(0.20, 0.05) == pytest.approx(0.19)
    assert absolute_floor(0.90, 0.05) == pytest.approx(0.85)
    # (0.8 * 0.2 + 0.9 * 0.1) / 100 = 0.0025
    assert accuracy_difference_se(0.8, 0.9, 100) == pytest.approx(0.05)


def test_a_drop_of_one_pair_in_eleven_is_noise_but_the_same_drop_on_many_pairs_is_not() -> None:
    production = PRODUCTION | {"pair_accuracy_rd": 9 / 11, "pairs_rd": 11.0}
    candidate = production | {"pair_accuracy_rd": 8 / 11}
    settings = SETTINGS.model_copy(update={"min_pairs": 10})
    # se = sqrt((24/121 + 18/121) / 11) = 0.17764; 1.645 se = 0.2922 > 0.05
    few = check_gates(candidate, production, settings)
    rd = next(c for c in few.checks if c.name == "pair_accuracy_rd")
    assert few.passed and rd.threshold == pytest.approx(9 / 11 - 1.645 * 0.17764, abs=1e-4)
    # the same accuracies over 1,100 pairs: 1.645 se = 0.0292 < 0.0909
    many = check_gates(
        candidate | {"pairs_rd": 1100.0}, production | {"pairs_rd": 1100.0}, settings
    )
    assert not many.passed
    assert many.reason == "pair_accuracy_rd 0.7273 < 0.7682 (production 0.8182)"


def test_a_candidate_within_tolerance_passes_every_gate() -> None:
    candidate = PRODUCTION | {"ndcg@100": 0.1901, "recall@20": 0.29, "pair_accuracy_np": 0.86}
    result = check_gates(candidate, PRODUCTION, SETTINGS, "v1", 50)
    assert result.passed, result.reason
    names = [c.name for c in result.checks]
    assert names == [
        "kl_to_reference",
        "ndcg@100",
        "recall@20",
        "pair_accuracy_np",
        "pair_accuracy_rk",
    ]
    assert result.reason == "every gate passed against v1"


def test_each_regression_is_refused_with_its_figures() -> None:
    candidate = PRODUCTION | {"ndcg@100": 0.1899, "pair_accuracy_rk": 0.54, "kl_to_reference": 2.5}
    result = check_gates(candidate, PRODUCTION, SETTINGS, "v1", 50)
    assert not result.passed
    assert result.reason == (
        "kl_to_reference 2.5000 > bound 2.0000; "
        "ndcg@100 0.1899 < 0.1900 (production 0.2000); "
        "pair_accuracy_rk 0.5400 < 0.5500 (production 0.6000)"
    )


def test_nan_never_passes_and_few_pairs_are_not_compared() -> None:
    candidate = PRODUCTION | {"recall@20": math.nan, "pair_accuracy_np": 0.0, "pairs_np": 29.0}
    result = check_gates(candidate, PRODUCTION, SETTINGS.model_copy(update={"min_pairs": 30}))
    failed = [c.name for c in result.checks if not c.passed]
    assert failed == ["recall@20"]
    assert "pair_accuracy_np: only 29 pairs, not compared" in [c.detail for c in result.checks]


def test_without_production_only_the_bounds_apply() -> None:
    fine = check_gates({"kl_to_reference": 1.0, "ndcg@100": 0.0}, None, SETTINGS)
    assert fine.passed and [c.name for c in fine.checks] == ["kl_to_reference"]
    assert fine.reason == "every gate passed against no production version"
    assert not check_gates({"kl_to_reference": 2.01}, None, SETTINGS).passed
