"""A variant's metric estimate and its variance, from its sufficient statistics.

A metric is a smooth function f of the column means m: f = m_y for a mean metric,
f = m_num / m_den for a ratio metric. Its variance is the delta method's
Var f(m) ~ grad f^T C grad f / n, which for a mean is the familiar s^2 / n. CUPED subtracts
theta times the same function of the pre-period columns, whose expectation is equal in every
variant because assignment is random.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from abtest.metrics import Metric
from abtest.sufficient_stats import Moments


@dataclass(frozen=True)
class Estimate:
    """A point estimate, the variance of the estimator, and that variance's degrees of freedom."""

    value: float
    variance: float
    df: float

    @property
    def std_error(self) -> float:
        return math.sqrt(max(self.variance, 0.0))


def satterthwaite_df(variances: Sequence[float], dfs: Sequence[float]) -> float:
    """df = (sum_i V_i)^2 / sum_i (V_i^2 / df_i), the degrees of freedom of a sum of variances."""
    denominator = sum(v**2 / df for v, df in zip(variances, dfs, strict=True))
    return sum(variances) ** 2 / denominator if denominator > 0 else math.inf


def stratified_estimate(estimates: Sequence[Estimate], weights: Sequence[float]) -> Estimate:
    """x = sum_p pi_p x_p, Var = sum_p pi_p^2 Var_p, pi_p = w_p / sum w (independent strata)."""
    shares = [w / sum(weights) for w in weights]
    parts = [s**2 * e.variance for s, e in zip(shares, estimates, strict=True)]
    return Estimate(
        sum(s * e.value for s, e in zip(shares, estimates, strict=True)),
        sum(parts),
        satterthwaite_df(parts, [e.df for e in estimates]) if len(parts) > 1 else estimates[0].df,
    )


def metric_gradient(mean: np.ndarray, ratio: bool) -> tuple[float, np.ndarray]:
    """f and grad f at m: f = m_0 (mean), or f = m_0/m_1 with grad (1/m_1, -m_0/m_1^2) (ratio)."""
    if not ratio:
        return float(mean[0]), np.array([1.0])
    num, den = float(mean[0]), float(mean[1])
    return num / den, np.array([1.0 / den, -num / den**2])


def undefined_part(moments: Moments, metric: Metric, pre_period: bool = False) -> str | None:
    """Why f(m) has no value for these users (no users, or a ratio over a zero total), or None."""
    if moments.n < 2:
        return f"{moments.n} users"
    if not metric.is_ratio:
        return None
    denominator = f"pre_{metric.denominator}" if pre_period else str(metric.denominator)
    if moments.sums[moments.columns.index(denominator)] != 0:
        return None
    return f"no {metric.denominator}" + (" in the pre-period" if pre_period else "")


def delta_method_covariance(moments: Moments, grad_f: np.ndarray, grad_g: np.ndarray) -> float:
    """Cov(f(m), g(m)) ~ grad f^T C grad g / n."""
    return float(grad_f @ moments.covariance @ grad_g) / moments.n


@dataclass(frozen=True)
class VariantStats:
    """f (the metric) and g (its pre-period twin) of one variant, with their covariances."""

    n: int
    f: float
    g: float | None
    var_f: float
    var_g: float
    cov_fg: float

    def as_estimate(self) -> Estimate:
        """f unadjusted, with n - 1 degrees of freedom."""
        return Estimate(self.f, self.var_f, self.n - 1)


def variant_stats(moments: Moments, metric: Metric, with_pre_period: bool) -> VariantStats:
    """Delta-method f, Var f and, with a pre-period, g, Var g and Cov(f, g) of one variant."""
    own = metric.columns[: len(metric.columns) // 2]
    ratio = metric.is_ratio
    k = len(own)
    if not with_pre_period:
        part = moments.select(own)
        f, grad = metric_gradient(part.mean(), ratio)
        return VariantStats(part.n, f, None, delta_method_covariance(part, grad, grad), 0.0, 0.0)
    part = moments.select(metric.columns)
    mean = part.mean()
    f, grad_own = metric_gradient(mean[:k], ratio)
    g, grad_pre = metric_gradient(mean[k:], ratio)
    grad_f = np.concatenate([grad_own, np.zeros(k)])
    grad_g = np.concatenate([np.zeros(k), grad_pre])
    return VariantStats(
        part.n,
        f,
        g,
        delta_method_covariance(part, grad_f, grad_f),
        delta_method_covariance(part, grad_g, grad_g),
        delta_method_covariance(part, grad_f, grad_g),
    )


def cuped_theta(variants: Sequence[VariantStats]) -> float:
    """theta = sum_v Cov_v(f, g) / sum_v Var_v(g): the slope minimising Var of the difference."""
    var_g = sum(v.var_g for v in variants)
    return sum(v.cov_fg for v in variants) / var_g if var_g > 0 else 0.0


def pooled_pre_value(variants: Sequence[VariantStats]) -> float:
    """g_bar = sum_v n_v g_v / sum_v n_v, the covariate's mean over all users."""
    return sum(v.n * (v.g or 0.0) for v in variants) / sum(v.n for v in variants)


def adjusted_estimate(v: VariantStats, theta: float, g_bar: float) -> Estimate:
    """f_adj = f - theta (g - g_bar); Var = Var f - 2 theta Cov(f, g) + theta^2 Var g."""
    if v.g is None:
        return v.as_estimate()
    return Estimate(
        v.f - theta * (v.g - g_bar),
        v.var_f - 2 * theta * v.cov_fg + theta**2 * v.var_g,
        v.n - 1,
    )


def variance_reduction(v: VariantStats, adjusted: Estimate) -> float:
    """1 - Var f_adj / Var f: the share of variance CUPED removed."""
    return 1.0 - adjusted.variance / v.var_f if v.var_f > 0 else 0.0


# Real pre-periods never explain a metric to within one part in a billion; a fit that close means
# the covariate is a copy of the metric (a logging or join error), whose variance is zero.
EXACT_FIT = 1.0 - 1e-9


def cuped_degenerate(pair: Sequence[VariantStats], adjusted: Sequence[Estimate]) -> str | None:
    """Why CUPED's adjustment of this pair cannot be used (the unadjusted one can), or None."""
    if sum(v.var_g for v in pair) <= 0:
        return "the pre-period values do not vary"
    fits = [variance_reduction(v, a) for v, a in zip(pair, adjusted, strict=True) if v.var_f > 0]
    if any(fit >= EXACT_FIT for fit in fits):
        return "the pre-period predicts the metric exactly"
    if pair[0].f > 0 >= adjusted[0].value:
        return f"it moves the control's value to {adjusted[0].value:.4g}, where no lift is relative"
    return None
