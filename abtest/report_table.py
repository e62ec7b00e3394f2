"""The report as a person reads it: a table like the paper's Table 1, warnings first."""

from __future__ import annotations

from rich.console import Group
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from abtest.analysis import Report
from abtest.comparison import MetricResult

CORRECTIONS = {"holm": "Holm's procedure", "bh": "Benjamini-Hochberg"}


def significance_marks(p_value: float, alpha: float) -> str:
    """*** p < 0.001, ** p < 0.01, * p < alpha, else nothing."""
    if p_value < 0.001:
        return "***"
    if p_value < 0.01:
        return "**"
    return "*" if p_value < alpha else ""


def _lift_style(result: MetricResult) -> str:
    if result.better is None:
        return ""
    return "green" if result.better else "red"


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


def _lift_cells(result: MetricResult, alpha: float) -> tuple[Text, str]:
    """The lift with its significance marks, and its interval; "n/a" where there is none."""
    if result.lift is None:
        return Text("n/a"), "-"
    p = result.p_value if result.p_value_adjusted is None else result.p_value_adjusted
    marks = significance_marks(p, alpha)
    interval = "-" if result.lift_ci is None else (
        f"[{result.lift_ci[0]:+.2%}, {result.lift_ci[1]:+.2%}]"
    )  # fmt: skip
    return Text(f"{result.lift:+.2%}{marks}", style=_lift_style(result)), interval


def _shares(users: dict[str, int], expected: dict[str, float]) -> str:
    total = max(sum(users.values()), 1)
    return ", ".join(
        f"{name} {n:,} ({n / total:.2%} of users, {expected[name]:.2%} allocated)"
        for name, n in users.items()
    )


def report_table(report: Report) -> Group:
    title = (
        f"Experiment {report.experiment}: {report.window_start:%Y-%m-%d %H:%M} to "
        f"{report.window_end:%Y-%m-%d %H:%M} UTC"
        + (" (from the user rollup)" if report.read_from == "rollup" else "")
    )
    parts: list[Panel | Table | Text] = [
        Text(title, style="bold"),
        Text(f"Exposed: {_shares(report.users, report.expected_share)}"),
    ]
    if len(report.phases) > 1:
        for i, phase in enumerate(report.phases, 1):
            srm = "" if phase.srm_p_value is None else f"; sample ratio p = {phase.srm_p_value:.3g}"
            parts.append(
                Text(
                    f"  phase {i}, {phase.start:%Y-%m-%d %H:%M} to {phase.end:%Y-%m-%d %H:%M}: "
                    f"{_shares(phase.users, phase.expected_share)}{srm}"
                )
            )
    for warning in report.warnings:
        style = "bold white on red" if report.srm_flagged and "RATIO" in warning else "yellow"
        parts.append(Panel(Text(warning, style=style), title="warning", border_style="red"))
    if report.srm_p_value is not None and not report.srm_flagged:
        parts.append(Text(f"Sample ratio check passed (p = {report.srm_p_value:.3g})."))
    if not report.results:
        return Group(*parts)
    pct = 100 * (1 - report.alpha)
    corrected = report.multiple_testing != "none"
    table = Table(show_lines=False)
    for header in ("metric", "role", report.control, "variant", "value", "lift", f"{pct:.0f}% CI",
                   "p", *(["adj. p"] if corrected else []), "always-valid p",
                   "CUPED var. cut"):  # fmt: skip
        table.add_column(header, justify="left" if header in ("metric", "role") else "right")
    for r in report.results:
        reduction = (
            "-" if r.cuped_variance_reduction is None else f"{r.cuped_variance_reduction:.0%}"
        )
        table.add_row(
            r.label,
            r.role,
            _number(r.control_value),
            r.variant,
            _number(r.variant_value),
            *_lift_cells(r, report.alpha),
            f"{r.p_value:.3g}",
            *([_number(r.p_value_adjusted)] if corrected else []),
            f"{r.always_valid_p:.3g}",
            reduction,
        )
    parts.append(table)
    for r in report.results:
        for why in ([r.no_result] if r.no_result else []) + r.notes:
            parts.append(Text(f"{r.label} ({r.variant}): {why}", style="yellow"))
    family = (
        f" {CORRECTIONS[report.multiple_testing]} adjusted the p of {report.tests_in_family} "
        "tests together; marks and colours follow it."
        if corrected
        else ""
    )
    looks = "the experiment's reports (this is the first)" if report.looks == 1 else (
        f"the experiment's {report.looks} reports"
    )  # fmt: skip
    parts.append(
        Text(
            f"*** p < 0.001, ** p < 0.01, * p < {report.alpha}. Lift is relative to "
            f"{report.control}; values are CUPED-adjusted where a pre-period exists. The "
            f"always-valid p, the lowest over {looks}, may be read at any time; the fixed p "
            "only at the planned end." + family
        )
    )
    return Group(*parts)
