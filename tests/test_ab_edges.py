"""The report at its edges: zero baselines, undefined ratios, zero variance, degenerate CUPED."""

from __future__ import annotations

import math

import numpy as np
import pytest

from abtest.analysis import Report, analyze
from abtest.decision import decide
from abtest.estimators import Estimate, VariantStats, adjusted_estimate, cuped_degenerate
from abtest.lift_plot import plot_lifts
from abtest.metrics import MetricName
from abtest.report_table import report_table
from abtest.significance import always_valid_p_value, relative_lift, two_sided_p_value
from tests.ab_simulation import START, draw_users, two_variant_experiment, variant_data

RATIOS = (MetricName.CTR, MetricName.SESSION_FAILURE_RATE, MetricName.SESSION_PURCHASE_RATE)


def users(seed: int, n: int = 2000) -> dict[str, np.ndarray]:
    return draw_users(np.random.default_rng(seed), (n,))


def by_metric(report: Report) -> dict[MetricName, object]:
    return {r.metric: r for r in report.results}


def renders(report: Report, tmp_path) -> None:
    """The table, the plot and the decision take the report as it is."""
    from rich.console import Console

    with open(tmp_path / "table.txt", "w") as sink:
        Console(file=sink, width=200).print(report_table(report))
    assert plot_lifts(report, tmp_path / "plot.png").stat().st_size > 0
    decide(report, "treatment", MetricName.GMV_PER_USER)


def test_zero_variance_gives_p_one_not_zero() -> None:
    # Both variants constant: L = 12/10 - 1 = 0.2 with Var L = 0; nothing to test against.
    lift = relative_lift(Estimate(10, 0, 99), Estimate(12, 0, 99))
    assert lift.value == pytest.approx(0.2) and lift.variance == 0
    assert two_sided_p_value(lift) == 1.0
    assert always_valid_p_value(lift, tau=0.02) == 1.0


@pytest.mark.parametrize("pre_period_days", [14.0, 0.0], ids=["cuped", "plain"])
def test_no_purchases_in_the_control_is_a_baseline_zero_and_the_rest_is_reported(
    pre_period_days: float, tmp_path
) -> None:
    control, treatment = users(1), users(2)
    control["purchases"] = np.zeros_like(control["purchases"])
    control["gmv"] = np.zeros_like(control["gmv"])
    control["purchase_sessions"] = np.zeros_like(control["purchase_sessions"])
    experiment = two_variant_experiment(pre_period_days=pre_period_days)
    report = analyze(experiment, variant_data(control, treatment), START)
    results = by_metric(report)
    assert len(results) == 5
    for name in (MetricName.GMV_PER_USER, MetricName.PURCHASES_PER_USER,
                 MetricName.SESSION_PURCHASE_RATE):  # fmt: skip
        r = results[name]
        # Under CUPED the adjusted control is not 0, and its lift was -27,163%: still no lift.
        assert r.no_result.startswith("baseline zero: the control's"), r
        assert (r.lift, r.lift_ci, r.p_value, r.always_valid_p) == (None, None, 1.0, 1.0)
        assert r.significant is False and r.better is None
    for name in (MetricName.CTR, MetricName.SESSION_FAILURE_RATE):
        r = results[name]
        assert r.no_result is None and r.lift is not None and 0 < r.p_value <= 1
    renders(report, tmp_path)


def test_a_control_without_impressions_has_undefined_ratios(tmp_path) -> None:
    control, treatment = users(3), users(4)
    for column in ("impressions", "clicks", "sessions", "failed_sessions", "purchase_sessions"):
        control[column] = np.zeros_like(control[column])
    report = analyze(two_variant_experiment(), variant_data(control, treatment), START)
    results = by_metric(report)
    for name in RATIOS:
        assert results[name].no_result.startswith("undefined: control has no "), results[name]
        assert results[name].control_value is None and results[name].p_value == 1.0
    assert results[MetricName.CTR].no_result == "undefined: control has no impressions"
    assert results[MetricName.GMV_PER_USER].lift is not None
    renders(report, tmp_path)


def test_a_ctr_with_no_clicks_in_the_control_is_a_baseline_zero() -> None:
    control, treatment = users(5), users(6)
    control["clicks"] = np.zeros_like(control["clicks"])
    report = analyze(two_variant_experiment(), variant_data(control, treatment), START)
    ctr = by_metric(report)[MetricName.CTR]
    assert ctr.control_value == 0 and ctr.no_result.startswith("baseline zero")
    assert ctr.variant_value == pytest.approx(
        treatment["clicks"].sum() / treatment["impressions"].sum()
    )


# 19.99 and 29.99 are not exact in binary: Q - n m m^T left a variance of 1e-14, and the
# report said +50% with p = 0, which decide promoted.
@pytest.mark.parametrize(("spent", "pre"), [((10.0, 12.0), 5.0), ((19.99, 29.99), 19.99)])
def test_constant_users_have_no_variance_and_no_significance(
    spent: tuple[float, float], pre: float
) -> None:
    control, treatment = users(7), users(8)
    control["gmv"] = np.full(2000, spent[0])
    treatment["gmv"] = np.full(2000, spent[1])
    for period in (control, treatment):
        period["pre_gmv"] = np.full(2000, pre)
    report = analyze(two_variant_experiment(), variant_data(control, treatment), START)
    gmv = by_metric(report)[MetricName.GMV_PER_USER]
    assert gmv.lift == pytest.approx(spent[1] / spent[0] - 1)
    assert gmv.p_value == 1.0 and not gmv.significant
    assert decide(report, "treatment", MetricName.GMV_PER_USER).action != "promote"
    assert gmv.no_result.startswith("no variance")
    assert gmv.notes == ["CUPED off: the pre-period values do not vary"]


def test_a_pre_period_equal_to_the_metric_falls_back_to_the_unadjusted_estimate() -> None:
    # pre_gmv == gmv for every user: CUPED takes all variance away (theta = 1), a zero-width
    # interval that was called significant. The fallback gives exactly the unadjusted result.
    control, treatment = users(9), users(10)
    for period in (control, treatment):
        period["pre_gmv"] = period["gmv"].copy()
    data = variant_data(control, treatment)
    cuped = by_metric(analyze(two_variant_experiment(), data, START))[MetricName.GMV_PER_USER]
    plain_experiment = two_variant_experiment(pre_period_days=0)
    plain = by_metric(analyze(plain_experiment, data, START))[MetricName.GMV_PER_USER]
    assert cuped.notes == ["CUPED off: the pre-period predicts the metric exactly"]
    assert cuped.cuped_variance_reduction is None
    assert (cuped.lift, cuped.lift_ci, cuped.p_value) == (plain.lift, plain.lift_ci, plain.p_value)
    assert 0 < cuped.p_value <= 1


def test_a_pre_period_without_impressions_turns_cuped_off_for_ratios_only() -> None:
    control, treatment = users(11), users(12)
    for period in (control, treatment):
        for column in ("pre_impressions", "pre_clicks", "pre_sessions", "pre_failed_sessions",
                       "pre_purchase_sessions"):  # fmt: skip
            period[column] = np.zeros_like(period[column])
    results = by_metric(analyze(two_variant_experiment(), variant_data(control, treatment), START))
    assert results[MetricName.CTR].notes == [
        "CUPED off: control has no impressions in the pre-period and treatment has no "
        "impressions in the pre-period"
    ]
    assert results[MetricName.CTR].lift is not None
    assert results[MetricName.GMV_PER_USER].cuped_variance_reduction > 0.0


def test_cuped_that_moves_the_control_below_zero_is_not_used() -> None:
    # theta = (0.9 + 0.9) / (1 + 1) = 0.9, g_bar = 3: the control becomes 0.1 - 0.9 (5 - 3) = -1.7.
    pair = [VariantStats(100, 0.1, 5.0, 1.0, 1.0, 0.9), VariantStats(100, 1.0, 1.0, 1.0, 1.0, 0.9)]
    adjusted = [adjusted_estimate(v, 0.9, 3.0) for v in pair]
    assert adjusted[0].value == pytest.approx(-1.7)
    assert cuped_degenerate(pair, adjusted) == (
        "it moves the control's value to -1.7, where no lift is relative"
    )
    sane = [adjusted_estimate(v, 0.9, 3.0) for v in (pair[1], pair[1])]
    assert cuped_degenerate([pair[1], pair[1]], sane) is None
    assert math.isclose(sane[0].value, 1.0 - 0.9 * (1.0 - 3.0))
