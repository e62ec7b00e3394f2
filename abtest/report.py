"""Producing an experiment's report from the store: query, analyse, write JSON and PNG."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from abtest.analysis import Report, analyze
from abtest.lift_plot import plot_lifts
from abtest.looks import LookLog
from abtest.metrics_sql import query_variant_data
from abtest.registry import ExperimentRegistry
from abtest.settings import AbSettings, cap_memory
from abtest.user_rollup import rollup_variant_data
from streams.store.store_views import connect_store

log = logging.getLogger(__name__)


def build_report(
    store_dir: Path,
    name: str,
    now: datetime | None = None,
    raw: bool = False,
    settings: AbSettings | None = None,
) -> Report:
    """The report of experiment ``name`` over everything the store holds up to ``now``: from
    its rollup (``user_rollup``) when one was built recently enough, up to the rollup's time,
    else (or if ``raw``) from the raw events under ``settings.memory_limit`` (``settings``:
    the environment's by default, for every caller alike)."""
    experiment = ExperimentRegistry(store_dir).get(name)
    now = now or datetime.now(UTC)
    settings = settings or AbSettings()
    rolled = (
        None if raw else rollup_variant_data(store_dir, experiment, now, settings.rollup_max_age_s)
    )
    if rolled is not None:
        data, window_end = rolled
    else:
        con = connect_store(store_dir)
        cap_memory(con, settings.memory_limit)
        data, window_end = query_variant_data(con, experiment, now), experiment.window_end(now)
    report = analyze(experiment, data, window_end)
    report.read_from = "events" if rolled is None else "rollup"
    return LookLog(store_dir, name).record(report, taken_at=datetime.now(UTC))


@dataclass(frozen=True)
class ReportFiles:
    json: Path
    png: Path | None


def write_report(report: Report, out_dir: Path) -> ReportFiles:
    """``<name>.json`` always; ``<name>.png`` when there are results to plot."""
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = out_dir / f"{report.experiment}.json"
    json_path.write_text(report.model_dump_json(indent=2))
    png_path = plot_lifts(report, out_dir / f"{report.experiment}.png") if report.results else None
    log.info("report written to %s", json_path)
    return ReportFiles(json_path, png_path)
