"""Comparing a treatment estimate b with the control estimate a: lift, interval, p-values.

Every test here is a t-test of an estimate against zero with Welch-Satterthwaite degrees of
freedom; for the absolute difference of two plain means it is exactly Welch's two-sample t-test.
The always-valid p-value is the mixture sequential probability ratio test (mSPRT; Johari et al.,
"Always valid inference", 2017) on the relative lift with a normal prior N(0, tau^2): it may be
read at every look without inflating false positives.
"""

from __future__ import annotations

import math

# The t distribution's ufuncs, not ``scipy.stats.t``: the same values, without the argument
# checks that made each call 50 us (a report computes two per metric and phase).
from scipy.special import stdtr, stdtrit

from abtest.estimators import Estimate, satterthwaite_df


def welch_satterthwaite_df(v_a: float, df_a: float, v_b: float, df_b: float) -> float:
    """df = (v_a + v_b)^2 / (v_a^2 / df_a + v_b^2 / df_b)."""
    return satterthwaite_df([v_a, v_b], [df_a, df_b])


def absolute_difference(a: Estimate, b: Estimate) -> Estimate:
    """d = b - a, Var d = Var a + Var b."""
    return Estimate(
        b.value - a.value,
        a.variance + b.variance,
        welch_satterthwaite_df(a.variance, a.df, b.variance, b.df),
    )


def relative_lift(a: Estimate, b: Estimate) -> Estimate:
    """L = b/a - 1, Var L ~ Var b / a^2 + b^2 Var a / a^4 (delta method)."""
    part_a = b.value**2 * a.variance / a.value**4
    part_b = b.variance / a.value**2
    return Estimate(
        b.value / a.value - 1.0,
        part_a + part_b,
        welch_satterthwaite_df(part_a, a.df, part_b, b.df),
    )


def two_sided_p_value(estimate: Estimate) -> float:
    """p = 2 P(T_df > |value| / se); 1 when se = 0, where there is nothing to test against."""
    if estimate.variance <= 0:
        return 1.0
    t = abs(estimate.value) / estimate.std_error
    return float(2 * stdtr(estimate.df, -t))


def confidence_interval(estimate: Estimate, alpha: float) -> tuple[float, float]:
    """value -/+ t_{1-alpha/2, df} se."""
    half = float(stdtrit(estimate.df, 1 - alpha / 2)) * estimate.std_error
    return estimate.value - half, estimate.value + half


def always_valid_p_value(estimate: Estimate, tau: float) -> float:
    """p = min(1, 1/L), L = sqrt(V/(V+tau^2)) exp(tau^2 x^2 / (2 V (V+tau^2))); 1 if V = 0."""
    v = estimate.variance
    if v <= 0:
        return 1.0
    log_lambda = 0.5 * math.log(v / (v + tau**2)) + tau**2 * estimate.value**2 / (
        2 * v * (v + tau**2)
    )
    return min(1.0, math.exp(-log_lambda))
