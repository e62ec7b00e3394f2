"""Simulated experiments: per-user totals drawn from a user model, aggregated as SQL would."""

from __future__ import annotations

import shutil
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from abtest.experiment import Experiment, Variant
from abtest.metrics_sql import VariantData, moment_columns
from abtest.registry import ExperimentRegistry
from abtest.sufficient_stats import cross_name
from streams.store.event_store import EventStore

START = datetime(2026, 11, 1, tzinfo=UTC)


def two_variant_experiment(
    name: str = "sim", start: datetime = START, **settings: object
) -> Experiment:
    """A 50/50 experiment: control serves v1, treatment v2."""
    return Experiment(
        name=name,
        variants=(
            Variant(name="control", weight=1, model_version="v1"),
            Variant(name="treatment", weight=1, model_version="v2"),
        ),
        start=start,
        **settings,
    )


def bench_store(root: Path, start: datetime, end: datetime) -> tuple[EventStore, Experiment]:
    """A new, empty store at ``root`` (whatever was there is removed) holding one experiment,
    ``bench``, a 50/50 two-variant one from ``start`` to ``end``: the benchmarks' setting."""
    shutil.rmtree(root, ignore_errors=True)
    store = EventStore(root)
    store.init()
    registry = ExperimentRegistry(root)
    return store, registry.create(two_variant_experiment("bench", start, end=end))


def draw_users(rng: np.random.Generator, shape: tuple[int, ...], gmv_lift: float = 0.0) -> dict:
    """Per-user totals of both periods; a user's activity and tastes persist across periods."""
    activity = rng.gamma(2.0, 1.0, shape)
    click_taste = rng.beta(2, 8, shape)
    spend = rng.lognormal(3.0, 0.8, shape)
    columns = {}
    for prefix, lift in (("", gmv_lift), ("pre_", 0.0)):
        sessions = rng.poisson(activity) + (prefix == "")  # an exposed user has a session
        impressions = sessions + rng.poisson(0.5 * sessions)
        clicks = rng.binomial(impressions, click_taste)
        failed = rng.binomial(sessions, (1 - click_taste) ** 1.5)
        purchases = rng.poisson(0.3 * activity)
        columns |= {
            f"{prefix}sessions": sessions,
            f"{prefix}impressions": impressions,
            f"{prefix}clicks": clicks,
            f"{prefix}failed_sessions": failed,
            f"{prefix}purchases": purchases,
            f"{prefix}purchase_sessions": np.minimum(purchases, sessions),
            f"{prefix}gmv": purchases * spend * rng.lognormal(0, 0.3, shape) * (1 + lift),
        }
    return columns


def aggregate(columns: dict[str, np.ndarray]) -> dict[str, float]:
    """The report query's row for one variant: n, sum_<c> and every cross product."""
    names = moment_columns()
    values = np.stack([np.asarray(columns[c], dtype=float) for c in names], axis=-1)
    row: dict[str, float] = {"n": len(values)}
    sums, cross = values.sum(axis=0), values.T @ values
    for i, a in enumerate(names):
        row[f"sum_{a}"] = sums[i]
        for j, b in enumerate(names):
            row[cross_name(a, b)] = cross[i, j]
    return row


def variant_data(control: dict, treatment: dict) -> VariantData:
    rows = {"control": aggregate(control), "treatment": aggregate(treatment)}
    return VariantData((rows,), 0, {})
