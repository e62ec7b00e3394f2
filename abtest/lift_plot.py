"""The report's picture: each metric's relative lift with its confidence interval."""

from __future__ import annotations

from pathlib import Path

# The Figure API draws without pyplot's global state or a display backend.
from matplotlib.figure import Figure

from abtest.analysis import Report


def plot_lifts(report: Report, path: Path) -> Path:
    """A forest plot of lift and interval per metric and variant; significant ones coloured."""
    rows = report.results
    fig = Figure(figsize=(8, 1.2 + 0.5 * max(len(rows), 1)))
    ax = fig.subplots()
    for y, r in enumerate(reversed(rows)):
        colour = "grey" if r.better is None else ("tab:green" if r.better else "tab:red")
        low, high = (100 * x for x in r.lift_ci)
        ax.errorbar(
            100 * r.lift, y, xerr=[[100 * r.lift - low], [high - 100 * r.lift]],
            fmt="o", color=colour, capsize=4,
        )  # fmt: skip
    ax.set_yticks(range(len(rows)), [f"{r.label} ({r.variant})" for r in reversed(rows)])
    ax.axvline(0, color="black", linewidth=0.8)
    ax.set_xlabel(f"lift vs {report.control}, % ({100 * (1 - report.alpha):.0f}% CI)")
    title = f"{report.experiment}: " + ", ".join(f"{k} {v:,}" for k, v in report.users.items())
    if report.srm_flagged:
        title += "  (SAMPLE RATIO MISMATCH)"
    ax.set_title(title, fontsize=10, color="red" if report.srm_flagged else "black")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path
