"""Each A/B statistic against scipy or a hand computation on fixed data."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from abtest.estimators import (
    Estimate,
    adjusted_estimate,
    cuped_theta,
    delta_method_covariance,
    metric_gradient,
    pooled_pre_value,
    variance_reduction,
    variant_stats,
)
from abtest.metrics import METRICS, MetricName
from abtest.significance import (
    absolute_difference,
    always_valid_p_value,
    confidence_interval,
    relative_lift,
    two_sided_p_value,
    welch_satterthwaite_df,
)
from abtest.srm import sample_ratio_chi_square, sample_ratio_p_value
from abtest.sufficient_stats import Moments

GMV = METRICS[MetricName.GMV_PER_USER]
CTR = METRICS[MetricName.CTR]


def mean_estimate(values: np.ndarray) -> Estimate:
    moments = Moments.from_values(["gmv"], values[:, None])
    return variant_stats(moments, GMV, with_pre_period=False).as_estimate()


def test_moments_give_the_sample_mean_and_covariance() -> None:
    values = np.array([[1.0, 2.0], [2.0, 2.0], [3.0, 4.0]])
    moments = Moments.from_values(["a", "b"], values)
    assert moments.mean() == pytest.approx([2.0, 8 / 3])
    assert moments.covariance == pytest.approx(np.cov(values.T))


def test_a_constant_column_has_exactly_zero_covariance() -> None:
    values = np.array([[19.99, 1.0], [19.99, 2.0], [19.99, 4.0]])
    covariance = Moments.from_values(["a", "b"], values).covariance
    assert covariance[0].tolist() == [0.0, 0.0] and covariance[:, 0].tolist() == [0.0, 0.0]
    assert covariance[1, 1] == pytest.approx(7 / 3)  # mean 7/3, squares 16/9 + 1/9 + 25/9


def test_welch_difference_of_means_is_scipys_welch_t_test() -> None:
    rng = np.random.default_rng(3)
    a, b = rng.exponential(10, 40), rng.exponential(13, 65)
    difference = absolute_difference(mean_estimate(a), mean_estimate(b))
    reference = stats.ttest_ind(b, a, equal_var=False)
    assert difference.value == pytest.approx(b.mean() - a.mean())
    assert two_sided_p_value(difference) == pytest.approx(reference.pvalue, rel=1e-9)
    assert difference.df == pytest.approx(reference.df, rel=1e-9)
    low, high = confidence_interval(difference, 0.05)
    ci = reference.confidence_interval(0.95)
    assert (low, high) == pytest.approx((ci.low, ci.high), rel=1e-9)


def test_welch_satterthwaite_by_hand() -> None:
    # (1 + 4)^2 / (1/9 + 16/19) = 25 / 0.95322...
    assert welch_satterthwaite_df(1, 9, 4, 19) == pytest.approx(25 / (1 / 9 + 16 / 19))


def test_relative_lift_delta_method_by_hand() -> None:
    lift = relative_lift(Estimate(10, 1, math.inf), Estimate(11, 4, math.inf))
    assert lift.value == pytest.approx(0.1)
    assert lift.variance == pytest.approx(4 / 100 + 121 * 1 / 10_000)  # 0.0521


def test_ratio_delta_method_by_hand() -> None:
    # clicks (1, 2, 3), impressions (2, 2, 4): means 2 and 8/3, var 1 and 4/3, cov 1.
    moments = Moments.from_values(["clicks", "impressions"], np.array([[1, 2], [2, 2], [3, 4]]))
    f, grad = metric_gradient(moments.mean(), ratio=True)
    assert f == pytest.approx(0.75)
    assert grad == pytest.approx([0.375, -0.28125])
    # (0.375^2 * 1 - 2 * 0.375 * 0.28125 * 1 + 0.28125^2 * 4/3) / 3
    assert delta_method_covariance(moments, grad, grad) == pytest.approx(0.03515625 / 3)


def test_ratio_delta_method_matches_the_spread_of_simulated_ratios() -> None:
    rng = np.random.default_rng(5)
    n, draws = 2000, 2000
    impressions = rng.poisson(5, (draws, n)) + 1
    clicks = rng.binomial(impressions, rng.beta(2, 8, (draws, n)))
    ratios = clicks.sum(axis=1) / impressions.sum(axis=1)
    one = Moments.from_values(["clicks", "impressions"], np.c_[clicks[0], impressions[0]])
    _, grad = metric_gradient(one.mean(), ratio=True)
    assert math.sqrt(delta_method_covariance(one, grad, grad)) == pytest.approx(
        ratios.std(), rel=0.08
    )


def _cuped_pair(rho: float, n: int, seed: int) -> tuple[np.ndarray, np.ndarray, list]:
    """Two variants' (pre, post) values with correlation rho, and their VariantStats."""
    rng = np.random.default_rng(seed)
    pre = rng.normal(50, 10, (2, n))
    post = 50 + rho * (pre - 50) + rng.normal(0, 10 * math.sqrt(1 - rho**2), (2, n))
    pair = [
        variant_stats(Moments.from_values(GMV.columns, np.c_[post[v], pre[v]]), GMV, True)
        for v in (0, 1)
    ]
    return pre, post, pair


def test_cuped_equals_welch_on_per_user_adjusted_values() -> None:
    pre, post, pair = _cuped_pair(0.7, 500, seed=1)
    theta, g_bar = cuped_theta(pair), pooled_pre_value(pair)
    a, b = (adjusted_estimate(v, theta, g_bar) for v in pair)
    # The same theta, applied user by user, then Welch's test from scipy.
    cov = [np.cov(post[v], pre[v]) for v in (0, 1)]
    expected_theta = (cov[0][0, 1] + cov[1][0, 1]) / (cov[0][1, 1] + cov[1][1, 1])
    assert theta == pytest.approx(expected_theta)
    adjusted = [post[v] - theta * (pre[v] - pre.mean()) for v in (0, 1)]
    reference = stats.ttest_ind(adjusted[1], adjusted[0], equal_var=False)
    difference = absolute_difference(a, b)
    assert difference.value == pytest.approx(adjusted[1].mean() - adjusted[0].mean())
    assert two_sided_p_value(difference) == pytest.approx(reference.pvalue, rel=1e-6)


def test_cuped_removes_rho_squared_of_the_variance() -> None:
    _, _, pair = _cuped_pair(0.8, 20_000, seed=2)
    adjusted = adjusted_estimate(pair[1], cuped_theta(pair), pooled_pre_value(pair))
    assert variance_reduction(pair[1], adjusted) == pytest.approx(0.64, abs=0.02)


def test_cuped_on_a_ratio_metric_reduces_its_variance() -> None:
    rng = np.random.default_rng(9)
    n = 5000
    activity = rng.gamma(2, 3, (2, n))
    taste = rng.beta(3, 12, (2, n))
    columns = []
    for v in (0, 1):
        imp, pre_imp = rng.poisson(activity[v]) + 1, rng.poisson(activity[v]) + 1
        columns.append(
            np.c_[rng.binomial(imp, taste[v]), imp, rng.binomial(pre_imp, taste[v]), pre_imp]
        )
    pair = [variant_stats(Moments.from_values(CTR.columns, c), CTR, True) for c in columns]
    adjusted = adjusted_estimate(pair[1], cuped_theta(pair), pooled_pre_value(pair))
    assert 0.1 < variance_reduction(pair[1], adjusted) < 0.9


def test_p_value_and_interval_against_scipy_t() -> None:
    estimate = Estimate(1.5, 0.49, 12)
    assert two_sided_p_value(estimate) == pytest.approx(2 * stats.t.sf(1.5 / 0.7, 12))
    low, high = confidence_interval(estimate, 0.1)
    assert high - 1.5 == pytest.approx(stats.t.ppf(0.95, 12) * 0.7)
    assert 1.5 - low == pytest.approx(high - 1.5)


def test_always_valid_p_value_by_hand() -> None:
    # Lambda = sqrt(1/2) exp(1 * 4 / (2 * 1 * 2)) = e / sqrt(2)
    assert always_valid_p_value(Estimate(2, 1, math.inf), tau=1) == pytest.approx(
        math.sqrt(2) / math.e
    )
    assert always_valid_p_value(Estimate(0, 1, math.inf), tau=1) == 1.0


def test_sample_ratio_mismatch_against_scipy_chisquare() -> None:
    observed, weights = [5210, 4790, 10_020], [1, 1, 2]
    reference = stats.chisquare(observed, [5005, 5005, 10_010])
    assert sample_ratio_chi_square(observed, weights) == pytest.approx(reference.statistic)
    assert sample_ratio_p_value(observed, weights) == pytest.approx(reference.pvalue)


def test_srm_flags_a_50_5_to_49_5_split_of_a_million_users() -> None:
    # chi^2 = 2 * 5000^2 / 500000 = 100
    assert sample_ratio_chi_square([505_000, 495_000], [1, 1]) == pytest.approx(100)
    assert sample_ratio_p_value([505_000, 495_000], [1, 1]) < 1e-20
    fair = np.random.default_rng(0).binomial(1_000_000, 0.5)
    assert sample_ratio_p_value([fair, 1_000_000 - fair], [1, 1]) > 0.001
