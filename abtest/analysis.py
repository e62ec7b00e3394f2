"""From per-variant aggregates to the experiment's verdicts: a pure function, no I/O.

For every metric and every treatment variant against the control: the CUPED-adjusted estimates
(unadjusted when there is no pre-period), the relative lift with its confidence interval, the
fixed-horizon p-value and the always-valid one. Before any of that, the guards an experimenter
relies on: too few users withholds the results, and a sample-ratio mismatch is flagged.
"""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel

from abtest.estimators import (
    adjusted_estimate,
    cuped_theta,
    pooled_pre_value,
    variance_reduction,
    variant_stats,
)
from abtest.experiment import Experiment
from abtest.metrics import METRICS, Metric, MetricName
from abtest.metrics_sql import VariantData
from abtest.significance import (
    absolute_difference,
    always_valid_p_value,
    confidence_interval,
    relative_lift,
    two_sided_p_value,
)
from abtest.srm import SRM_ALPHA, sample_ratio_p_value


class MetricResult(BaseModel):
    metric: MetricName
    label: str
    role: str  # "primary", "guardrail" or "secondary"
    variant: str
    control_value: float
    variant_value: float
    difference: float
    lift: float
    lift_ci: tuple[float, float]
    p_value: float
    always_valid_p: float
    significant: bool
    better: bool | None  # None when not significant
    cuped_variance_reduction: float | None


class Report(BaseModel):
    experiment: str
    control: str
    window_start: datetime
    window_end: datetime
    users: dict[str, int]
    expected_share: dict[str, float]
    srm_p_value: float | None
    srm_flagged: bool
    ambiguous_users: int
    unknown_variants: dict[str, int]
    sufficient_data: bool
    warnings: list[str]
    alpha: float
    results: list[MetricResult]


def _role(experiment: Experiment, name: MetricName) -> str:
    if name in experiment.primary_metrics:
        return "primary"
    return "guardrail" if name in experiment.guardrails else "secondary"


def compare_metric(
    experiment: Experiment, data: VariantData, metric: Metric, variant: str
) -> MetricResult:
    """One metric of one treatment variant against the control."""
    control = experiment.control.name
    with_pre = experiment.pre_period_days > 0
    pair = [variant_stats(data.moments(v, metric), metric, with_pre) for v in (control, variant)]
    theta = cuped_theta(pair) if with_pre else 0.0
    g_bar = pooled_pre_value(pair) if with_pre else 0.0
    a, b = (adjusted_estimate(v, theta, g_bar) for v in pair)
    lift = relative_lift(a, b)
    p = two_sided_p_value(lift)
    significant = p < experiment.alpha
    return MetricResult(
        metric=metric.name,
        label=metric.label,
        role=_role(experiment, metric.name),
        variant=variant,
        control_value=a.value,
        variant_value=b.value,
        difference=absolute_difference(a, b).value,
        lift=lift.value,
        lift_ci=confidence_interval(lift, experiment.alpha),
        p_value=p,
        always_valid_p=always_valid_p_value(lift, experiment.sequential_tau),
        significant=significant,
        better=(lift.value > 0) == metric.higher_is_better if significant else None,
        cuped_variance_reduction=variance_reduction(pair[1], b) if with_pre else None,
    )


def analyze(experiment: Experiment, data: VariantData, window_end: datetime) -> Report:
    """The report of ``experiment`` over what the store holds (``data``)."""
    names = [v.name for v in experiment.variants]
    users = {name: data.users(name) for name in names}
    weights = [v.weight for v in experiment.variants]
    total_weight = sum(weights)
    warnings: list[str] = []
    srm_p = sample_ratio_p_value(list(users.values()), weights) if sum(users.values()) else None
    srm_flagged = srm_p is not None and srm_p < SRM_ALPHA
    if srm_flagged:
        warnings.append(
            f"SAMPLE RATIO MISMATCH (p = {srm_p:.2g} < {SRM_ALPHA}): exposed users "
            f"{users} do not match the allocation; exposure or logging differs between "
            "variants, so no result of this report can be trusted until that is explained"
        )
    if data.ambiguous_users:
        warnings.append(
            f"{data.ambiguous_users} users had impressions in more than one variant and are "
            "left out"
        )
    if data.unknown_variants:
        warnings.append(f"impressions name variants the experiment lacks: {data.unknown_variants}")
    short = {n: u for n, u in users.items() if u < experiment.min_users_per_variant}
    if short:
        warnings.append(
            f"too little data: {short} exposed users (each variant needs at least "
            f"{experiment.min_users_per_variant}); results are withheld rather than noise"
        )
    results = []
    if not short:
        for variant in names[1:]:
            for metric in METRICS.values():
                results.append(compare_metric(experiment, data, metric, variant))
    for r in results:
        if r.role == "guardrail" and r.better is False:
            warnings.append(
                f"GUARDRAIL {r.label} got significantly worse in {r.variant}: {r.lift:+.2%} "
                f"(p = {r.p_value:.2g})"
            )
    return Report(
        experiment=experiment.name,
        control=experiment.control.name,
        window_start=experiment.start,
        window_end=window_end,
        users=users,
        expected_share={v.name: v.weight / total_weight for v in experiment.variants},
        srm_p_value=srm_p,
        srm_flagged=srm_flagged,
        ambiguous_users=data.ambiguous_users,
        unknown_variants=data.unknown_variants,
        sufficient_data=not short,
        warnings=warnings,
        alpha=experiment.alpha,
        results=results,
    )
