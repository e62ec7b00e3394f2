"""The experiment's verdict on its treatment: ship it, roll it back, or keep running.

A pure function of the report. The rule, on the always-valid p (the one that may be read at
any look, so deciding as soon as it crosses alpha keeps the error rate):

* no decision while the report withholds results (too few users) or flags a sample-ratio
  mismatch (the assignment itself is broken, so no figure can be trusted);
* promote when the primary metric is significantly better (always-valid p < alpha, in the
  metric's good direction) and no guardrail is significantly worse;
* roll back when the primary metric is significantly worse;
* otherwise continue (a guardrail that is significantly worse blocks a promotion but is no
  reason on its own to roll back: it is reported).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel

from abtest.analysis import Report
from abtest.comparison import MetricResult
from abtest.metrics import METRICS, MetricName

Action = Literal["promote", "rollback", "continue"]


class Decision(BaseModel):
    experiment: str
    treatment: str
    metric: MetricName
    action: Action
    reason: str
    primary: MetricResult | None
    guardrails_worse: list[MetricResult]


def significantly(result: MetricResult, alpha: float) -> Literal["better", "worse"] | None:
    """The direction of a result whose always-valid p is below alpha, else None."""
    if result.lift is None or result.always_valid_p >= alpha:
        return None
    good = (result.lift > 0) == METRICS[result.metric].higher_is_better
    return "better" if good else "worse"


def decide(report: Report, treatment: str, metric: MetricName) -> Decision:
    """The verdict on ``treatment`` by ``metric`` (see the module docstring)."""

    def verdict(action: Action, reason: str, primary: MetricResult | None = None) -> Decision:
        return Decision(
            experiment=report.experiment,
            treatment=treatment,
            metric=metric,
            action=action,
            reason=reason,
            primary=primary,
            guardrails_worse=worse,
        )

    worse: list[MetricResult] = []
    if report.srm_flagged:
        return verdict("continue", f"sample ratio mismatch (p = {report.srm_p_value:.2g})")
    if not report.sufficient_data:
        return verdict("continue", f"too few exposed users yet: {report.users}")
    mine = [r for r in report.results if r.variant == treatment]
    primary = next((r for r in mine if r.metric == metric), None)
    if primary is None:
        return verdict("continue", f"the report has no {metric} for {treatment}")
    if primary.lift is None or primary.lift_ci is None:
        return verdict("continue", f"{primary.label} has no result: {primary.no_result}", primary)
    worse = [r for r in mine if r.role == "guardrail" and significantly(r, report.alpha) == "worse"]
    figures = (
        f"{primary.label} {primary.lift:+.2%} [{primary.lift_ci[0]:+.2%}, "
        f"{primary.lift_ci[1]:+.2%}], always-valid p = {primary.always_valid_p:.3g}"
    )
    direction = significantly(primary, report.alpha)
    if direction == "worse":
        return verdict("rollback", f"{figures}: significantly worse", primary)
    if direction == "better" and worse:
        names = ", ".join(f"{r.label} {r.lift:+.2%}" for r in worse)
        return verdict("continue", f"{figures}, but guardrails got worse: {names}", primary)
    if direction == "better":
        return verdict("promote", f"{figures}: significantly better", primary)
    return verdict("continue", f"{figures}: not significant at alpha {report.alpha:g}", primary)
