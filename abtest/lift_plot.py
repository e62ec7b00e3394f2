"""The report's picture: each metric's relative lift with its confidence interval."""

from __future__ import annotations

from pathlib import Path

# The Figure API draws without pyplot's global state or a display backend.
from matplotlib.figure import Figure

from abtest.analysis import Report


def plot_lifts(report: Report, path: Path) -> Path:
    """A forest plot of lift and interval per metric and variant; significant ones coloured."""
    # Metrics without a lift (a zero baseline, say) have nothing to draw; the table says why.
    rows = [(r, r.lift, r.lift_ci) for r in reversed(report.results) if r.lift_ci is not None]
    fig = Figure(figsize=(8, 1.2 + 0.5 * max(len(rows), 1)))
    ax = fig.subplots()
    for y, (r, lift, (low, high)) in enumerate(rows):
        colour = "grey" if r.better is None else ("tab:green" if r.better else "tab:red")
        ax.errorbar(
            100 * lift, y, xerr=[[100 * (lift - low)], [100 * (high - lift)]],
            fmt="o", color=colour, capsize=4,
        )  # fmt: skip
    ax.set_yticks(range(len(rows)), [f"{r.label} ({r.variant})" for r, _, _ in rows])
    ax.axvline(0, color="black", linewidth=0.8)
    ax.set_xlabel(f"lift vs {report.control}, % ({100 * (1 - report.alpha):.0f}% CI)")
    title = f"{report.experiment}: " + ", ".join(f"{k} {v:,}" for k, v in report.users.items())
    if report.srm_flagged:
        title += "  (SAMPLE RATIO MISMATCH)"
    ax.set_title(title, fontsize=10, color="red" if report.srm_flagged else "black")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path
