"""The experiment metrics: what each one measures, per exposed user, and which way is good.

Every metric is a function of per-user totals counted from the user's first impression in the
experiment until its end:

* ``gmv_per_user``          mean of GMV (sum of quantity x unit price of purchases)
* ``purchases_per_user``    mean of purchase events
* ``ctr``                   sum clicks / sum impressions (page views: impression events), a ratio
* ``session_failure_rate``  sum failed sessions / sum sessions, where a session counts if it
                            showed an impression and failed if none of its events is a click
* ``session_purchase_rate`` sum sessions with a purchase / sum sessions (as above)

Ratio metrics are ratios of sums over users, not means of per-user ratios; the user is the unit
of randomisation, so their variance comes from the delta method over per-user (numerator,
denominator) pairs. The ``pre_`` columns are the same totals in the pre-experiment period, the
CUPED covariates.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class MetricName(StrEnum):
    GMV_PER_USER = "gmv_per_user"
    CTR = "ctr"
    PURCHASES_PER_USER = "purchases_per_user"
    SESSION_FAILURE_RATE = "session_failure_rate"
    SESSION_PURCHASE_RATE = "session_purchase_rate"


@dataclass(frozen=True)
class Metric:
    name: MetricName
    label: str
    numerator: str
    denominator: str | None  # None: a mean per exposed user
    higher_is_better: bool

    @property
    def is_ratio(self) -> bool:
        return self.denominator is not None

    @property
    def columns(self) -> tuple[str, ...]:
        """The per-user columns it reads: the period's, then the pre-period's."""
        own = (self.numerator,) if self.denominator is None else (self.numerator, self.denominator)
        return own + tuple(f"pre_{c}" for c in own)


METRICS: dict[MetricName, Metric] = {
    m.name: m
    for m in (
        Metric(MetricName.GMV_PER_USER, "GMV per user", "gmv", None, True),
        Metric(MetricName.CTR, "CTR", "clicks", "impressions", True),
        Metric(MetricName.PURCHASES_PER_USER, "Purchases per user", "purchases", None, True),
        Metric(
            MetricName.SESSION_FAILURE_RATE,
            "Session failure rate",
            "failed_sessions",
            "sessions",
            False,
        ),
        Metric(
            MetricName.SESSION_PURCHASE_RATE,
            "Session purchase rate",
            "purchase_sessions",
            "sessions",
            True,
        ),
    )
}

# Per-user totals the metrics SQL produces, in both periods.
USER_COLUMNS: tuple[str, ...] = (
    "gmv",
    "purchases",
    "clicks",
    "impressions",
    "sessions",
    "failed_sessions",
    "purchase_sessions",
)
