"""From per-phase, per-variant aggregates to the experiment's verdicts: pure, no I/O.

For every metric and every treatment variant against the control, ``comparison.compare_metric``
gives the estimates, the relative lift with its interval, the fixed-horizon p and the
always-valid one. Before any of that, the guards an experimenter relies on: too few users
withholds the results, and a sample-ratio mismatch is flagged, each allocation phase checked
against its own weights. Then, if the experiment asks for it, the family of tests is adjusted
for multiple testing.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel

from abtest.comparison import MetricResult, compare_metric, is_better
from abtest.experiment import Experiment, PhaseWindow
from abtest.metrics import METRICS
from abtest.metrics_sql import VariantData
from abtest.multiple_testing import Correction, adjust
from abtest.srm import SRM_ALPHA, phased_sample_ratio_p_value, sample_ratio_p_value


class PhaseSummary(BaseModel):
    """One allocation period: its users per variant against its own weights."""

    start: datetime
    end: datetime
    users: dict[str, int]
    expected_share: dict[str, float]
    srm_p_value: float | None


class Report(BaseModel):
    experiment: str
    control: str
    window_start: datetime
    window_end: datetime
    users: dict[str, int]  # over all phases
    expected_share: dict[str, float]  # over all phases: sum_p N_p w_pv / N
    srm_p_value: float | None  # all phases in one chi-square test
    srm_flagged: bool
    phases: list[PhaseSummary] = []
    ambiguous_users: int
    unknown_variants: dict[str, int]
    sufficient_data: bool
    warnings: list[str]
    alpha: float
    multiple_testing: Correction = "none"
    tests_in_family: int = 0  # how many p-values the correction adjusted together
    looks: int = 1  # reports of this experiment so far, this one included
    results: list[MetricResult]
    # "rollup": the experiment's user rollup (``user_rollup``), whose round ended the window;
    # "events": the raw events, up to the report's time.
    read_from: Literal["rollup", "events"] = "events"


def phase_summaries(
    windows: list[PhaseWindow], data: VariantData, names: list[str]
) -> list[PhaseSummary]:
    summaries = []
    for w in windows:
        users = {name: data.users(name, w.index) for name in names}
        shares = {name: w.weights[name] / sum(w.weights.values()) for name in names}
        srm_p = (
            sample_ratio_p_value([users[n] for n in names], [w.weights[n] for n in names])
            if sum(users.values())
            else None
        )
        summaries.append(PhaseSummary(start=w.start, end=w.end, users=users,
                                      expected_share=shares, srm_p_value=srm_p))  # fmt: skip
    return summaries


def expected_shares(phases: list[PhaseSummary], names: list[str]) -> dict[str, float]:
    """E[share_v] = sum_p N_p w_pv / N over the phases (the last phase's while N = 0)."""
    total = sum(sum(p.users.values()) for p in phases)
    if total == 0:
        return phases[-1].expected_share
    return {n: sum(sum(p.users.values()) * p.expected_share[n] for p in phases) / total
            for n in names}  # fmt: skip


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
    windows = experiment.phase_windows(window_end)
    if len(windows) != len(data.phases):
        raise ValueError(f"data of {len(data.phases)} phases for {len(windows)} phase windows")
    phases = phase_summaries(windows, data, names)
    users = {name: data.users(name) for name in names}
    warnings: list[str] = []
    srm_p = (
        phased_sample_ratio_p_value(
            [[p.users[n] for n in names] for p in phases],
            [[w.weights[n] for n in names] for w in windows],
        )
        if sum(users.values())
        else None
    )
    srm_flagged = srm_p is not None and srm_p < SRM_ALPHA
    if srm_flagged:
        by_phase = "" if len(phases) == 1 else " (per phase: " + "; ".join(
            f"from {p.start:%Y-%m-%d %H:%M} {p.users}, p = {p.srm_p_value:.2g}"
            for p in phases if p.srm_p_value is not None
        ) + ")"  # fmt: skip
        warnings.append(
            f"SAMPLE RATIO MISMATCH (p = {srm_p:.2g} < {SRM_ALPHA}): exposed users "
            f"{users}{by_phase} do not match the allocation; exposure or logging differs "
            "between variants, so no result of this report can be trusted until that is "
            "explained"
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
        expected_share=expected_shares(phases, names),
        srm_p_value=srm_p,
        srm_flagged=srm_flagged,
        phases=phases,
        ambiguous_users=data.ambiguous_users,
        unknown_variants=data.unknown_variants,
        sufficient_data=not short,
        warnings=warnings,
        alpha=experiment.alpha,
        multiple_testing=experiment.multiple_testing,
        tests_in_family=family,
        results=results,
    )
