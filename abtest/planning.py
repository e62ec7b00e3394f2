"""``pagellm ab plan``: users and days an experiment needs, from the store's recent history.

The metric's per-user mean and spread come from every user with an impression in the history
window (the users an experiment would expose), its reach over days from when each of them was
last seen; ``abtest.power`` turns those into users and days.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from pathlib import Path

from pydantic import BaseModel

from abtest.estimators import undefined_part, variant_stats
from abtest.metrics import METRICS, MetricName
from abtest.metrics_sql import history_sql
from abtest.power import days_needed, power_of, users_needed
from abtest.registry import ExperimentError
from abtest.sufficient_stats import Moments
from streams.store.store_views import connect_store


class Plan(BaseModel):
    metric: MetricName
    lift: float
    alpha: float
    power: float
    weights: dict[str, float]
    traffic: float
    history_since: datetime
    history_until: datetime
    history_users: int
    baseline: float  # the metric's value over the history
    per_user_sd: float  # sigma: of the metric's delta-method linearisation for a ratio
    users_per_variant: dict[str, int]
    users_total: int
    achieved_power: float  # of the weakest comparison, at the rounded numbers of users
    days: float | None  # None: the recent traffic would never reach that many users
    days_within_history: bool  # False: extrapolated beyond the history's days


def plan_experiment(
    store_dir: Path,
    metric_name: MetricName,
    lift: float,
    *,
    alpha: float = 0.05,
    power: float = 0.8,
    weights: dict[str, float] | None = None,
    traffic: float = 1.0,
    history_days: int = 14,
    now: datetime | None = None,
) -> Plan:
    """The plan to detect a relative ``lift`` of ``metric_name`` (see the module docstring)."""
    metric = METRICS[metric_name]
    weights = weights or {"control": 1.0, "treatment": 1.0}
    until = now or datetime.now(UTC)
    since = until - timedelta(days=history_days)
    con = connect_store(store_dir)
    cursor = con.execute(history_sql(), {"since": since, "until": until})
    names = [d[0] for d in cursor.description]
    row = dict(zip(names, cursor.fetchone() or (), strict=True))
    own = metric.columns[: len(metric.columns) // 2]
    moments = Moments.from_aggregates(own, row)
    if (why := undefined_part(moments, metric)) is not None:
        raise ExperimentError(
            f"history: the store's last {history_days} days have {why}, so {metric.label} has "
            "no baseline to plan from (--history-days, --now)"
        )
    stats = variant_stats(moments, metric, with_pre_period=False)
    if stats.f == 0:
        raise ExperimentError(f"history: {metric.label} was 0 over the last {history_days} days")
    sigma2 = stats.var_f * stats.n  # Var f = sigma^2 / n
    cv2 = sigma2 / stats.f**2
    needed = users_needed(cv2, lift, alpha, power, weights)
    total = sum(needed.values())
    by_days_ago = dict(zip(row["days_ago"] or [], row["users_by_days_ago"] or [], strict=True))
    reach = [sum(by_days_ago.get(d, 0) for d in range(k)) for k in range(1, history_days + 1)]
    days = days_needed(reach, total, traffic)
    control, *treatments = needed
    return Plan(
        metric=metric_name,
        lift=lift,
        alpha=alpha,
        power=power,
        weights=weights,
        traffic=traffic,
        history_since=since,
        history_until=until,
        history_users=stats.n,
        baseline=stats.f,
        per_user_sd=math.sqrt(sigma2),
        users_per_variant=needed,
        users_total=total,
        achieved_power=min(
            power_of(cv2, lift, needed[control], needed[t], alpha) for t in treatments
        ),
        days=days,
        days_within_history=days is not None and days <= history_days,
    )
