"""Simulated experiments: honest false-positive rates, the power theory predicts, valid peeking."""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import pytest
from scipy import stats

from abtest.analysis import analyze
from abtest.estimators import Estimate
from abtest.experiment import Experiment
from abtest.metrics import MetricName
from abtest.power import users_needed
from abtest.significance import always_valid_p_value, relative_lift, two_sided_p_value
from tests.ab_simulation import START, draw_users, two_variant_experiment, variant_data

ALPHA = 0.05


def rejection_rates(
    experiments: Mapping[str, Experiment], runs: int, users: int, seed: int, gmv_lift: float = 0.0
) -> dict[str, dict[MetricName, float]]:
    """Per experiment and metric, the share of ``runs`` simulated experiments rejected at
    ALPHA; every experiment analyses the same draws (drawing is most of a run's time)."""
    rng = np.random.default_rng(seed)
    rejected = {name: dict.fromkeys(MetricName, 0) for name in experiments}
    for _ in range(runs):
        control = draw_users(rng, (users,))
        treatment = draw_users(rng, (users,), gmv_lift=gmv_lift)
        data = variant_data(control, treatment)
        for name, experiment in experiments.items():
            for result in analyze(experiment, data, START).results:
                rejected[name][result.metric] += result.p_value < ALPHA
    return {
        name: {m: r / runs for m, r in by_metric.items()} for name, by_metric in rejected.items()
    }


def test_a_a_false_positive_rate_is_alpha_for_every_metric_with_and_without_cuped() -> None:
    # 4,000 A/A experiments: the rate's standard error is 0.0034, so [0.04, 0.06] is +-2.9 se.
    experiments = {
        "cuped": two_variant_experiment(pre_period_days=14.0),
        "plain": two_variant_experiment(pre_period_days=0.0),
    }
    rates = rejection_rates(experiments, runs=4000, users=1000, seed=11)
    for name, by_metric in rates.items():
        for metric, rate in by_metric.items():
            assert 0.04 <= rate <= 0.06, f"{name}, {metric}: false-positive rate {rate:.4f}"


def test_a_planted_lift_is_found_as_often_as_theory_predicts() -> None:
    # Normal users (mean 100, sd 30), a planted lift of 3.83% on the mean, as many users per arm
    # as `ab plan` asks for 80% power: se(L) = sqrt(sd^2/n (1 + (1+d)^2)) / mean,
    # power = Phi(d/se - z) + Phi(-d/se - z).
    rng = np.random.default_rng(4)
    mean, sd, lift, runs = 100.0, 30.0, 0.0383, 2000
    planned = users_needed((sd / mean) ** 2, lift, ALPHA, 0.8, {"control": 1, "treatment": 1})
    n = planned["control"]
    assert planned == {"control": 1001, "treatment": 1001}
    se = math.sqrt(sd**2 / n * (1 + (1 + lift) ** 2)) / mean
    z = stats.norm.ppf(1 - ALPHA / 2)
    predicted = stats.norm.cdf(lift / se - z) + stats.norm.cdf(-lift / se - z)
    a = rng.normal(mean, sd, (runs, n))
    b = rng.normal(mean * (1 + lift), sd, (runs, n))
    found = 0
    for i in range(runs):
        estimates = [Estimate(x[i].mean(), x[i].var(ddof=1) / n, n - 1) for x in (a, b)]
        found += two_sided_p_value(relative_lift(*estimates)) < ALPHA
    assert predicted == pytest.approx(0.80, abs=0.01)
    assert found / runs == pytest.approx(predicted, abs=0.03)


def test_a_planted_gmv_lift_is_detected_through_the_report() -> None:
    experiment = {"cuped": two_variant_experiment()}
    rates = rejection_rates(experiment, runs=100, users=40_000, seed=5, gmv_lift=0.05)["cuped"]
    assert rates[MetricName.GMV_PER_USER] > 0.7
    assert rates[MetricName.CTR] < 0.12


def test_always_valid_p_value_survives_peeking_where_the_fixed_one_does_not() -> None:
    # 1,000 A/A experiments looked at 20 times each: rejecting at the first look with p < alpha.
    rng = np.random.default_rng(8)
    runs, looks, step = 1000, 20, 100
    values = rng.lognormal(3, 1, (runs, 2, looks * step))
    sums, squares = np.cumsum(values, axis=2), np.cumsum(values**2, axis=2)
    peeking_fixed = peeking_valid = 0
    for i in range(runs):
        fixed = valid = False
        for k in range(1, looks + 1):
            n = k * step
            est = []
            for v in (0, 1):
                m = sums[i, v, n - 1] / n
                var = (squares[i, v, n - 1] - n * m**2) / (n - 1)
                est.append(Estimate(m, var / n, n - 1))
            lift = relative_lift(*est)
            fixed |= two_sided_p_value(lift) < ALPHA
            valid |= always_valid_p_value(lift, tau=0.1) < ALPHA
        peeking_fixed += fixed
        peeking_valid += valid
    assert peeking_fixed / runs > 0.12  # about 0.2 expected: peeking inflates the fixed p-value
    assert peeking_valid / runs <= ALPHA


def test_a_guardrail_that_gets_worse_is_called_out() -> None:
    rng = np.random.default_rng(2)
    control, treatment = draw_users(rng, (20_000,)), draw_users(rng, (20_000,))
    # Every treatment session fails: the guardrail moves the wrong way.
    treatment["failed_sessions"] = treatment["sessions"]
    report = analyze(two_variant_experiment(), variant_data(control, treatment), START)
    assert any(w.startswith("GUARDRAIL Session failure rate got significantly worse")
               for w in report.warnings)  # fmt: skip
    clean = analyze(two_variant_experiment(), variant_data(control, control), START)
    assert not any("GUARDRAIL" in w for w in clean.warnings)
