"""How many users an experiment needs to see a lift, and how many days of traffic that takes.

The report tests the relative lift L = b/a - 1 (``significance.relative_lift``). With per-user
coefficient of variation cv = sigma / mu (a ratio metric's sigma is that of its delta-method
linearisation), the same sigma in both variants, and n_c = N w_c, n_t = N w_t users,

    se(L)^2 = cv^2 ((1 + d)^2 / n_c + 1 / n_t),

and a two-sided test at alpha finds a true lift d with probability
power = Phi(d / se - z_{1-alpha/2}) + Phi(-d / se - z_{1-alpha/2}). Setting
d / se = z_{1-alpha/2} + z_power (the second term is negligible) gives N below. CUPED, when the
experiment has a pre-period, removes a further share rho^2 of the variance: the plan, which
knows no rho yet, is conservative by that much.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

# The normal distribution's ufuncs, not ``scipy.stats.norm``: the same values, and the import
# of scipy.stats (about 1 s) was most of what `pagellm ab plan` took to answer.
from scipy.special import ndtr, ndtri


def lift_standard_error(cv2: float, lift: float, n_control: float, n_treatment: float) -> float:
    """se(L) = sqrt(cv^2 ((1 + d)^2 / n_c + 1 / n_t))."""
    return math.sqrt(cv2 * ((1 + lift) ** 2 / n_control + 1 / n_treatment))


def power_of(cv2: float, lift: float, n_control: float, n_treatment: float, alpha: float) -> float:
    """Phi(d / se - z) + Phi(-d / se - z), z = z_{1 - alpha/2}."""
    se = lift_standard_error(cv2, lift, n_control, n_treatment)
    z = ndtri(1 - alpha / 2)
    return float(ndtr(lift / se - z) + ndtr(-lift / se - z))


def users_needed(
    cv2: float, lift: float, alpha: float, power: float, weights: Mapping[str, float]
) -> dict[str, int]:
    """n_v = ceil(N w_v), N = max_t cv^2 ((1+d)^2 / w_c + 1 / w_t) (z_{1-a/2} + z_pow)^2 / d^2.

    The first variant is the control; every other one must reach ``power`` against it.
    """
    if lift == 0:
        raise ValueError("lift: a lift of 0 cannot be detected; give the smallest that matters")
    total = sum(weights.values())
    shares = [w / total for w in weights.values()]
    z = ndtri(1 - alpha / 2) + ndtri(power)
    scale = cv2 * z**2 / lift**2
    n_total = max(scale * ((1 + lift) ** 2 / shares[0] + 1 / w) for w in shares[1:])
    return {name: math.ceil(n_total * w) for name, w in zip(weights, shares, strict=True)}


def days_needed(reach: Sequence[int], users: int, traffic: float) -> float | None:
    """Days until ``users`` are exposed: the least k with traffic * reach[k-1] >= users, where
    reach[k-1] is the distinct users active over k days; beyond the history, growing by what
    its last day added, reach[-1] - reach[-2], per day (None when that is 0)."""
    for k, reached in enumerate(reach, start=1):
        if traffic * reached >= users:
            return float(k)
    if not reach:
        return None
    per_day = traffic * (reach[-1] - (reach[-2] if len(reach) > 1 else 0))
    if per_day <= 0:
        return None
    return len(reach) + (users - traffic * reach[-1]) / per_day
