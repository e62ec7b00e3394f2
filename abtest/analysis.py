"""From per-variant aggregates to the experiment's verdicts: a pure function, no I/O.

For every metric and every treatment variant against the control: the CUPED-adjusted estimates
(unadjusted when there is no pre-period), the relative lift with its confidence interval, the
fixed-horizon p-value and the always-valid one. Before any of that, the guards an experimenter
relies on: too few users withholds the results, and a sample-ratio mismatch is flagged.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime

from pydantic import BaseModel

from abtest.estimators import (
    Estimate,
    adjusted_estimate,
    cuped_degenerate,
    cuped_theta,
    pooled_pre_value,
    undefined_part,
    variance_reduction,
    variant_stats,
)
from abtest.experiment import Experiment
from abtest.metrics import METRICS, Metric, MetricName
from abtest.metrics_sql import VariantData
from abtest.multiple_testing import Correction, adjust
from abtest.significance import (
    absolute_difference,
    always_valid_p_value,
    confidence_interval,
    relative_lift,
    two_sided_p_value,
)
from abtest.srm import SRM_ALPHA, sample_ratio_p_value
from abtest.sufficient_stats import Moments


class MetricResult(BaseModel):
    metric: MetricName
    label: str
    role: str  # "primary", "guardrail" or "secondary"
    variant: str
    control_value: float | None  # None: undefined (a ratio over a zero total)
    variant_value: float | None
    difference: float | None
    lift: float | None  # None with the reason in ``no_result``
    lift_ci: tuple[float, float] | None
    p_value: float  # 1 where nothing could be tested
    always_valid_p: float  # the running minimum over the experiment's looks (``abtest.looks``)
    always_valid_p_this_look: float  # from this look's data alone
    p_value_adjusted: float | None = None  # by the experiment's multiple_testing; None: not
    # in the family (off, a primary metric, or nothing tested)
    significant: bool  # p < alpha, the adjusted p where there is one
    better: bool | None  # None when not significant
    cuped_variance_reduction: float | None  # None: unadjusted
    no_result: str | None = None  # why there is no lift to test, e.g. "baseline zero: ..."
    notes: list[str] = []  # e.g. why CUPED was not applied


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
    multiple_testing: Correction = "none"
    tests_in_family: int = 0  # how many p-values the correction adjusted together
    looks: int = 1  # reports of this experiment so far, this one included
    results: list[MetricResult]


def _role(experiment: Experiment, name: MetricName) -> str:
    if name in experiment.primary_metrics:
        return "primary"
    return "guardrail" if name in experiment.guardrails else "secondary"


@dataclass(frozen=True)
class PairEstimates:
    """The control's and the treatment's estimates, as the comparison will use them."""

    control: Estimate
    treatment: Estimate
    cuped_variance_reduction: float | None
    notes: list[str]


def pair_estimates(
    experiment: Experiment, metric: Metric, moments: Sequence[Moments], names: Sequence[str]
) -> PairEstimates:
    """CUPED-adjusted estimates, or unadjusted ones with the reason when the pre-period fails."""
    if experiment.pre_period_days <= 0:
        pair = [variant_stats(m, metric, with_pre_period=False) for m in moments]
        return PairEstimates(*(v.as_estimate() for v in pair), None, [])
    missing = [f"{v} has {why}" for v, m in zip(names, moments, strict=True)
               if (why := undefined_part(m, metric, pre_period=True))]  # fmt: skip
    pair = [variant_stats(m, metric, with_pre_period=not missing) for m in moments]
    plain = PairEstimates(*(v.as_estimate() for v in pair), None, [])
    if missing:
        return replace(plain, notes=[f"CUPED off: {' and '.join(missing)}"])
    theta, g_bar = cuped_theta(pair), pooled_pre_value(pair)
    adjusted = [adjusted_estimate(v, theta, g_bar) for v in pair]
    degenerate = cuped_degenerate(pair, adjusted)
    if degenerate:
        return replace(plain, notes=[f"CUPED off: {degenerate}"])
    reduction = variance_reduction(pair[1], adjusted[1])
    return PairEstimates(adjusted[0], adjusted[1], reduction, [])


def is_better(metric: Metric, lift: float, significant: bool) -> bool | None:
    """Whether a significant lift goes the metric's good way; None when not significant."""
    return (lift > 0) == metric.higher_is_better if significant else None


def _values(a: Estimate, b: Estimate) -> dict[str, float]:
    return {"control_value": a.value, "variant_value": b.value,
            "difference": absolute_difference(a, b).value}  # fmt: skip


def compare_metric(
    experiment: Experiment, data: VariantData, metric: Metric, variant: str
) -> MetricResult:
    """One metric of one treatment variant against the control; no lift where none is defined."""
    names = (experiment.control.name, variant)
    moments = [data.moments(v, metric) for v in names]
    result = MetricResult(
        metric=metric.name, label=metric.label, role=_role(experiment, metric.name),
        variant=variant, control_value=None, variant_value=None, difference=None, lift=None,
        lift_ci=None, p_value=1.0, always_valid_p=1.0, always_valid_p_this_look=1.0,
        significant=False, better=None,
        cuped_variance_reduction=None,
    )  # fmt: skip
    undefined = [f"{v} has {why}" for v, m in zip(names, moments, strict=True)
                 if (why := undefined_part(m, metric))]  # fmt: skip
    if undefined:
        return result.model_copy(update={"no_result": f"undefined: {' and '.join(undefined)}"})
    # Zero before any adjustment: CUPED would turn it into a tiny baseline and a huge "lift".
    plain = [variant_stats(m, metric, with_pre_period=False).as_estimate() for m in moments]
    if plain[0].value == 0:
        why = f"baseline zero: the {names[0]}'s {metric.label} is 0, so no lift is relative to it"
        return result.model_copy(update=_values(*plain) | {"no_result": why})
    est = pair_estimates(experiment, metric, moments, names)
    a, b = est.control, est.treatment
    result = result.model_copy(
        update=_values(a, b)
        | {"cuped_variance_reduction": est.cuped_variance_reduction, "notes": est.notes}
    )
    lift = relative_lift(a, b)
    if lift.variance <= 0:
        why = f"no variance: every user of both variants has the same {metric.label}"
        return result.model_copy(update={"lift": lift.value, "no_result": why})
    p = two_sided_p_value(lift)
    valid_p = always_valid_p_value(lift, experiment.sequential_tau)
    significant = p < experiment.alpha
    return result.model_copy(
        update={
            "lift": lift.value,
            "lift_ci": confidence_interval(lift, experiment.alpha),
            "p_value": p,
            "always_valid_p": valid_p,
            "always_valid_p_this_look": valid_p,
            "significant": significant,
            "better": is_better(metric, lift.value, significant),
        }
    )


def correct_for_multiple_tests(
    experiment: Experiment, results: list[MetricResult]
) -> tuple[list[MetricResult], int]:
    """The results with adjusted p and significance for the family; the family's size."""
    if experiment.multiple_testing == "none":
        return results, 0
    family = [
        i
        for i, r in enumerate(results)
        if r.no_result is None and (experiment.correct_primary or r.role != "primary")
    ]
    adjusted = adjust([results[i].p_value for i in family], experiment.multiple_testing)
    corrected = list(results)
    for i, p in zip(family, adjusted, strict=True):
        r = results[i]
        significant = p < experiment.alpha
        better = is_better(METRICS[r.metric], r.lift or 0.0, significant)
        corrected[i] = r.model_copy(
            update={"p_value_adjusted": p, "significant": significant, "better": better}
        )
    return corrected, len(family)


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
    results, family = correct_for_multiple_tests(experiment, results)
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
        multiple_testing=experiment.multiple_testing,
        tests_in_family=family,
        results=results,
    )
