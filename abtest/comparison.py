"""One metric of one treatment variant against the control: estimates, lift, p-values.

Per allocation phase (``Experiment.phases``), the two variants' estimates are CUPED-adjusted
(or plain, saying why); the phases are then combined by post-stratification, each phase
weighted by its share of the exposed users, the same weights for both variants. A phase
where the treatment held more users then pulls both variants' values alike, so a reweight
during a trend cannot make a difference out of the trend (Simpson's paradox). With one phase
this is the plain comparison. Where no lift exists (a zero baseline, a ratio without a
denominator, no variance) the result says why and has p = 1.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from pydantic import BaseModel

from abtest.estimators import (
    Estimate,
    adjusted_estimate,
    cuped_degenerate,
    cuped_theta,
    pooled_pre_value,
    stratified_estimate,
    undefined_part,
    variant_stats,
)
from abtest.experiment import Experiment
from abtest.metrics import Metric, MetricName
from abtest.metrics_sql import VariantData
from abtest.significance import (
    absolute_difference,
    always_valid_p_value,
    confidence_interval,
    relative_lift,
    two_sided_p_value,
)
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
    notes: list[str] = []  # e.g. why CUPED was not applied, or a phase left out


def role(experiment: Experiment, name: MetricName) -> str:
    if name in experiment.primary_metrics:
        return "primary"
    return "guardrail" if name in experiment.guardrails else "secondary"


def is_better(metric: Metric, lift: float, significant: bool) -> bool | None:
    """Whether a significant lift goes the metric's good way; None when not significant."""
    return (lift > 0) == metric.higher_is_better if significant else None


@dataclass(frozen=True)
class PairEstimates:
    """The control's and the treatment's estimates in one phase: unadjusted, and as the
    comparison uses them (CUPED-adjusted where it applies)."""

    plain: tuple[Estimate, Estimate]
    used: tuple[Estimate, Estimate]
    adjusted: bool
    notes: list[str]


def pair_estimates(
    experiment: Experiment, metric: Metric, moments: Sequence[Moments], names: Sequence[str]
) -> PairEstimates:
    """CUPED-adjusted estimates, or unadjusted ones with the reason when the pre-period fails."""
    with_pre = experiment.pre_period_days > 0
    missing = [f"{v} has {why}" for v, m in zip(names, moments, strict=True)
               if with_pre and (why := undefined_part(m, metric, pre_period=True))]  # fmt: skip
    pair = [variant_stats(m, metric, with_pre_period=with_pre and not missing) for m in moments]
    plain = (pair[0].as_estimate(), pair[1].as_estimate())
    if not with_pre:
        return PairEstimates(plain, plain, False, [])
    if missing:
        return PairEstimates(plain, plain, False, [f"CUPED off: {' and '.join(missing)}"])
    theta, g_bar = cuped_theta(pair), pooled_pre_value(pair)
    adjusted = (adjusted_estimate(pair[0], theta, g_bar), adjusted_estimate(pair[1], theta, g_bar))
    degenerate = cuped_degenerate(pair, adjusted)
    if degenerate:
        return PairEstimates(plain, plain, False, [f"CUPED off: {degenerate}"])
    return PairEstimates(plain, adjusted, True, [])


def phase_label(data: VariantData, index: int) -> str:
    return f"phase {index + 1}: " if len(data.phases) > 1 else ""


def usable_phases(
    data: VariantData, metric: Metric, names: Sequence[str]
) -> tuple[list[tuple[int, list[Moments]]], list[str]]:
    """The phases where ``metric`` is defined in both variants, with their moments; and why
    each other phase is not."""
    usable, left_out = [], []
    for i in range(len(data.phases)):
        moments = [data.moments(v, metric, i) for v in names]
        undefined = [f"{v} has {why}" for v, m in zip(names, moments, strict=True)
                     if (why := undefined_part(m, metric))]  # fmt: skip
        if undefined:
            left_out.append(phase_label(data, i) + " and ".join(undefined))
        else:
            usable.append((i, moments))
    return usable, left_out


def _values(a: Estimate, b: Estimate) -> dict[str, float]:
    return {"control_value": a.value, "variant_value": b.value,
            "difference": absolute_difference(a, b).value}  # fmt: skip


def compare_metric(
    experiment: Experiment, data: VariantData, metric: Metric, variant: str
) -> MetricResult:
    """One metric of one treatment variant against the control; no lift where none is defined."""
    names = (experiment.control.name, variant)
    result = MetricResult(
        metric=metric.name, label=metric.label, role=role(experiment, metric.name),
        variant=variant, control_value=None, variant_value=None, difference=None, lift=None,
        lift_ci=None, p_value=1.0, always_valid_p=1.0, always_valid_p_this_look=1.0,
        significant=False, better=None, cuped_variance_reduction=None,
    )  # fmt: skip
    usable, left_out = usable_phases(data, metric, names)
    if not usable:
        return result.model_copy(update={"no_result": f"undefined: {'; '.join(left_out)}"})
    weights = [sum(m.n for m in moments) for _, moments in usable]

    def combined(per_phase: Sequence[Sequence[Estimate]]) -> list[Estimate]:
        """The control's and the treatment's estimates over the phases."""
        return [stratified_estimate([pair[v] for pair in per_phase], weights) for v in (0, 1)]

    phases = [(i, pair_estimates(experiment, metric, moments, names)) for i, moments in usable]
    plain = combined([p.plain for _, p in phases])
    # Zero before any adjustment: CUPED would turn it into a tiny baseline and a huge "lift".
    if plain[0].value == 0:
        why = f"baseline zero: the {names[0]}'s {metric.label} is 0, so no lift is relative to it"
        return result.model_copy(update=_values(*plain) | {"no_result": why})
    a, b = combined([p.used for _, p in phases])
    adjusted = any(p.adjusted for _, p in phases)
    notes = [f"{why}, so that phase is left out" for why in left_out]
    notes += [phase_label(data, i) + note for i, p in phases for note in p.notes]
    reduction = 1.0 - b.variance / plain[1].variance if adjusted and plain[1].variance else None
    result = result.model_copy(
        update=_values(a, b) | {"cuped_variance_reduction": reduction, "notes": notes}
    )
    lift = relative_lift(a, b)
    if lift.variance <= 0:
        why = (
            f"no variance: within each variant every user has the same {metric.label}, so no "
            "difference between them can be tested"
        )
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
