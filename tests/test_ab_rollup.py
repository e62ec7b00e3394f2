"""The experiment-user rollup against the raw-event report, round after round (real Parquet
files, real DuckDB): late events, replays, a growing window, compaction and a reweight."""

from __future__ import annotations

import math
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from abtest.experiment import Experiment
from abtest.metrics_sql import VariantData, query_variant_data
from abtest.registry import ExperimentRegistry
from abtest.report import build_report
from abtest.user_rollup import ExperimentRollup, RollupWorker, rollup_variant_data
from deploy.platform_status import rollup_status
from schemas import Click, Impression, Purchase
from streams.store.compactor import compact
from streams.store.event_store import EventStore
from streams.store.ledger_schema import LedgerBatch, SourceRecord
from streams.store.store_views import connect_store
from tests.ab_simulation import two_variant_experiment
from tests.test_ab_metrics_sql import T0, TOY_EVENTS, D, H, click, impression, purchase

MAX_AGE_S = 900.0
ToyEvent = Impression | Click | Purchase


class Ledger:
    """Writes batches as one ingest worker would, offsets continuing across batches."""

    def __init__(self, root: Path) -> None:
        self.store = EventStore(root)
        self.store.init()
        self.offset = 0

    def write(
        self, events: list[Impression | Click | Purchase], duplicates: frozenset[int] = frozenset()
    ) -> None:
        batch = LedgerBatch()
        for i, event in enumerate(events):
            source = SourceRecord("t", 0, self.offset, event.user_id.encode(), T0)
            batch.add_accepted(event, source, duplicate=i in duplicates)
            self.offset += 1
        self.store.write_batch(batch, "w1")


def assert_same(rolled: VariantData, raw: VariantData) -> None:
    """Counts equal, sums equal up to the order in which floats were added."""
    assert (rolled.ambiguous_users, rolled.unknown_variants) == (
        raw.ambiguous_users,
        raw.unknown_variants,
    )
    assert [sorted(p) for p in rolled.phases] == [sorted(p) for p in raw.phases]
    for rolled_phase, raw_phase in zip(rolled.phases, raw.phases, strict=True):
        for variant, row in raw_phase.items():
            assert set(rolled_phase[variant]) == set(row)
            for column, value in row.items():
                got = rolled_phase[variant][column]
                if isinstance(value, float):
                    assert math.isclose(got, value, rel_tol=1e-12), (variant, column)
                else:
                    assert got == value, (variant, column)


def check_round(worker: RollupWorker, experiment: Experiment, now: datetime) -> tuple[bool, int]:
    """A round at ``now``, then the rollup's data against the raw query's: (rebuilt, changed)."""
    (result,) = worker.run_round(now)
    rolled = rollup_variant_data(worker.store.root, experiment, now, MAX_AGE_S)
    assert rolled is not None
    data, window_end = rolled
    assert window_end == experiment.window_end(now) == result.window_end
    assert_same(data, query_variant_data(connect_store(worker.store.root), experiment, now))
    assert sum(data.users(v.name) for v in experiment.variants) > 0
    return result.rebuilt, result.changed_users


@pytest.fixture
def running(tmp_path) -> tuple[Ledger, Experiment]:
    ledger = Ledger(tmp_path / "store")
    # No end: the window ends at each round's time, so it grows between rounds.
    experiment = two_variant_experiment("exp", T0, pre_period_days=14)
    ExperimentRegistry(ledger.store.root).create(experiment, now=T0 - D)
    return ledger, experiment


def test_each_round_equals_the_raw_report_through_late_events_replays_and_compaction(
    running,
) -> None:
    ledger, experiment = running
    ledger.write(TOY_EVENTS)
    worker = RollupWorker(ledger.store.root)
    now = T0 + 2.5 * H
    # Exposed so far: u1, u2, u3 (two variants) and u6 (a variant the experiment lacks).
    assert check_round(worker, experiment, now) == (True, 4)

    late = [
        purchase("u1", "s0", T0 - 2 * D, 1, "4"),  # into the pre-period
        click("u2", "s3", T0 + 1.5 * H),  # a session already counted gets another click
        impression("u8", "s12", T0 + 1.5 * H, "treatment"),  # exposed before the last round
    ]
    ledger.write([*late, TOY_EVENTS[3]], duplicates=frozenset({3}))  # u1's exposure, replayed
    # The window grows to T0 + 2 days and takes in u5's exposure (T0 + 1 day) and u1's second
    # session, stored before the last round: their users are recomputed though no file of
    # theirs is new. Changed: u1, u2, u8 (new rows) and u5 (the window).
    now = T0 + 2 * D
    assert check_round(worker, experiment, now) == (False, 4)

    compact(ledger.store, min_age_s=0)  # the rows move into compacted files: none is new
    assert check_round(worker, experiment, now) == (False, 0)
    # Another process goes on from the position the last round saved: still nothing new.
    assert check_round(RollupWorker(ledger.store.root), experiment, now) == (False, 0)
    rollup = ExperimentRollup(ledger.store.root, "exp")
    state = rollup.state()
    assert state is not None
    rollup.file(state).unlink()  # lost: the next round builds every row again
    assert check_round(worker, experiment, now) == (True, 6)  # u1, u2, u3, u5, u6, u8
    state = rollup.state()
    ledger.write([purchase("u4", "s8", T0 + 2 * H, 1, "3")])  # u4 is in another experiment
    assert check_round(worker, experiment, now) == (False, 0)  # nothing of exp's changed...
    assert rollup.state().file == state.file  # ...so its rows were not even rewritten

    ledger.write([purchase("u2", "s13", T0 + 3 * D, 2, "9.5")])
    compact(ledger.store, min_age_s=0)  # compacted before the round read it as fresh
    now = T0 + 10 * D  # now past u1's purchase and u7's exposure
    assert check_round(worker, experiment, now) == (False, 3)  # u2 (a new row), u1 and u7


def test_a_reweight_rebuilds_and_a_report_reads_a_recent_rollup(running) -> None:
    ledger, _ = running
    ledger.write(TOY_EVENTS)
    worker = RollupWorker(ledger.store.root)
    worker.run_round(T0 + D)
    registry = ExperimentRegistry(ledger.store.root)
    reweighted = registry.reweight("exp", {"control": 1, "treatment": 3}, now=T0 + 2 * D)
    ledger.write([impression("u9", "s14", T0 + 3 * D, "treatment")])
    now = T0 + 4 * D
    assert check_round(worker, reweighted, now)[0]  # a new phase: every row again
    rolled = rollup_variant_data(ledger.store.root, reweighted, now, MAX_AGE_S)
    assert rolled is not None and len(rolled[0].phases) == 2

    minute = timedelta(minutes=1)
    report = build_report(ledger.store.root, "exp", now=now + minute)
    assert report.read_from == "rollup" and report.window_end == now
    raw = build_report(ledger.store.root, "exp", now=now + minute, raw=True)
    assert raw.read_from == "events" and raw.window_end == now + minute
    stale = build_report(ledger.store.root, "exp", now=now + timedelta(seconds=2 * MAX_AGE_S))
    assert stale.read_from == "events"
    # The rollup's rows are the users': one per exposed user, here u1, u2, u3, u5, u6, u9.
    state = ExperimentRollup(ledger.store.root, "exp").state()
    assert state is not None and state.users == 6
    # What `pagellm status` shows of it.
    shown = rollup_status(ledger.store.root, "exp", now + minute)
    assert shown == {"users": 6, "window_end": now.isoformat(), "age_s": 60.0}
    assert rollup_status(ledger.store.root, "never-rolled-up", now) is None
