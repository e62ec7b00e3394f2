"""Holm and Benjamini-Hochberg over metrics x variants: by hand, against scipy, in simulation."""

from __future__ import annotations

import numpy as np
import pytest
from rich.console import Console
from scipy import stats

from abtest.analysis import analyze
from abtest.experiment import Experiment, Variant
from abtest.metrics_sql import VariantData
from abtest.multiple_testing import benjamini_hochberg, holm
from abtest.report_table import report_table
from tests.ab_simulation import START, aggregate, draw_users

ALPHA = 0.05


def test_holm_by_hand() -> None:
    # sorted 0.005, 0.01, 0.03, 0.04 times 4, 3, 2, 1 = 0.02, 0.03, 0.06, 0.04; running max.
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])


def test_benjamini_hochberg_against_scipy() -> None:
    p = np.random.default_rng(1).uniform(0, 0.2, 25)
    assert benjamini_hochberg(p) == pytest.approx(stats.false_discovery_control(p, method="bh"))
    # sorted 0.005, 0.01, 0.03, 0.04 times 4/1, 4/2, 4/3, 4/4; running min from the top.
    assert benjamini_hochberg([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.02, 0.04, 0.04, 0.02])


def three_variants(**settings: object) -> Experiment:
    variants = tuple(Variant(name=n, weight=1, model_version="v") for n in ("control", "a", "b"))
    return Experiment(name="multi", variants=variants, start=START, **settings)


def draw(rng: np.random.Generator, users: int) -> VariantData:
    rows = {name: aggregate(draw_users(rng, (users,))) for name in ("control", "a", "b")}
    return VariantData((rows,), 0, {})


def test_holm_keeps_the_family_wise_error_of_an_a_a_a_experiment_at_alpha() -> None:
    # 1,000 A/A/A experiments, 10 tests each (5 metrics x 2 treatments): without a correction
    # some test is "significant" in far more than 5% of them.
    rng = np.random.default_rng(12)
    plain, corrected = three_variants(), three_variants(multiple_testing="holm",
                                                        correct_primary=True)  # fmt: skip
    runs, any_plain, any_holm = 1000, 0, 0
    for _ in range(runs):
        data = draw(rng, 400)
        any_plain += any(r.significant for r in analyze(plain, data, START).results)
        report = analyze(corrected, data, START)
        assert report.tests_in_family == 10
        any_holm += any(r.significant for r in report.results)
    assert any_plain / runs > 0.15
    assert any_holm / runs <= ALPHA + 0.01  # 1,000 runs: se of a rate of 0.05 is 0.007


def test_primary_metrics_keep_their_own_p_by_default(tmp_path) -> None:
    experiment = three_variants(multiple_testing="bh")
    report = analyze(experiment, draw(np.random.default_rng(3), 400), START)
    assert report.tests_in_family == 6  # three non-primary metrics x two treatments
    for r in report.results:
        if r.role == "primary":
            assert r.p_value_adjusted is None
        else:
            assert r.p_value_adjusted >= r.p_value
            assert r.significant == (r.p_value_adjusted < ALPHA)
    with open(tmp_path / "table.txt", "w") as sink:
        Console(file=sink, width=220).print(report_table(report))
    text = (tmp_path / "table.txt").read_text()
    assert "adj. p" in text and "Benjamini-Hochberg adjusted the p of 6 tests together" in text
