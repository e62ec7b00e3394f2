"""``make bench-compact``: the same queries over a store of small files and over its compaction.

1. A store as ingest workers leave it: ``BENCH_COMPACT_FILES`` (20,000) files of
   ``BENCH_COMPACT_ROWS`` (100) events each, in event-time order (a micro-batch holds the
   events of a moment), from ``abtest.synthetic_traffic``'s two-variant experiment over 7
   days. That is about three hours of one worker writing two batches a second.
2. The reference, the store as it is (every file fresh, and, as nearly all of a real store's
   files, more than a minute old): each query's median wall time over three runs, each from
   a new ``connect_store`` connection, whose time is reported too.
3. ``compact`` (min age 0): its wall time and rows per second; the count query again while
   the merged small files are still there (the views skip them by name); ``purge``
   (retention 0).
4. The same queries over the compacted store.

Queries: a count and GMV over ``events``; events per user (a full scan with a large group);
one event date's events (what a filter on ``event_date`` prunes); the A/B report's query
(``abtest.metrics_sql``); the ingest worker's watermark lookup on restart. Every query must
give the same answer on both layouts, else the run fails. The last line printed is the JSON
summary. ``BENCH_COMPACT_STORE`` moves the store (var/bench-compact); it is removed after.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import statistics
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
from rich.console import Console

from abtest.experiment import Experiment
from abtest.metrics_sql import query_variant_data
from abtest.synthetic_traffic import SYNTHETIC_TOPIC, as_ledger_rows, synthetic_traffic
from streams.progress_bars import progress_bar
from streams.store.compactor import compact, purge
from streams.store.event_store import LEDGER_DIR, EventStore
from streams.store.store_views import CLOCK_MARGIN_S, connect_store
from tests.ab_simulation import bench_store

FILES = int(os.environ.get("BENCH_COMPACT_FILES", 20_000))
ROWS = int(os.environ.get("BENCH_COMPACT_ROWS", 100))
STORE = Path(os.environ.get("BENCH_COMPACT_STORE", "var/bench-compact"))
START = datetime(2026, 10, 1, tzinfo=UTC)
END = START + timedelta(days=7)
RUNS = 3
console = Console(stderr=True, soft_wrap=True)


def generate(store: EventStore, experiment: Experiment) -> int:
    """Write the small files; returns the number of events."""
    # About ten events a user: a fifth of the events' worth of users is more than enough.
    generated = synthetic_traffic(experiment, FILES * ROWS // 5, window_end=END, seed=1)
    events = pa.concat_tables(generated).slice(0, FILES * ROWS).sort_by("ts")
    ledger = as_ledger_rows(events, 0)
    with progress_bar(console) as bar:
        task = bar.add_task("writing small files", total=FILES)
        for first in range(0, ledger.num_rows, ROWS):
            store.write_table(LEDGER_DIR, ledger.slice(first, ROWS), "bench")
            bar.advance(task)
    return ledger.num_rows


def queries(store: EventStore, experiment: Experiment) -> dict[str, Callable[[], object]]:
    day = (START + timedelta(days=3)).date()

    def sql(query: str) -> Callable[[], object]:
        return lambda: connect_store(store.root).execute(query).fetchall()

    return {
        "count_and_gmv": sql("SELECT count(*), sum(gmv) FROM events"),
        "events_per_user": sql(
            "SELECT count(*), sum(n) FROM (SELECT user_id, count(*) AS n FROM events GROUP BY 1)"
        ),
        "one_event_date": sql(f"SELECT count(*) FROM events WHERE event_date = DATE '{day}'"),
        "ab_report": lambda: query_variant_data(connect_store(store.root), experiment, END).phases,
        "watermarks": lambda: store.stored_watermarks(SYNTHETIC_TOPIC, [0]),
        "connect": lambda: connect_store(store.root).close(),
    }


def timed(run: Callable[[], object]) -> tuple[float, object]:
    seconds, answer = [], None
    for _ in range(RUNS):
        start = time.perf_counter()
        answer = run()
        seconds.append(time.perf_counter() - start)
    return statistics.median(seconds), answer


def same(a: object, b: object) -> bool:
    """Equal, floats up to their summation order (DuckDB adds them in parallel)."""
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=1e-9)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return a == b


def measure(
    store: EventStore, experiment: Experiment, label: str
) -> tuple[dict[str, float], dict[str, object]]:
    times, answers = {}, {}
    for name, run in queries(store, experiment).items():
        times[name], answers[name] = timed(run)
        console.print(f"{label}: {name} {times[name]:.3f} s")
    return times, answers


def main() -> None:
    logging.basicConfig(level=logging.WARNING)
    store, experiment = bench_store(STORE, START, END)
    try:
        rows = generate(store, experiment)
        # Views glob only the files of the last minute (the rest they name, see store_views);
        # nearly all of a real store's files are older than that, so these must be too.
        console.print(f"waiting {CLOCK_MARGIN_S} s for the files to be a minute old")
        time.sleep(CLOCK_MARGIN_S)
        fresh_times, fresh_answers = measure(store, experiment, "small files")
        started = time.perf_counter()
        report = compact(store, min_age_s=0, max_fresh_files=FILES)
        compact_s = time.perf_counter() - started
        # Until the purge, views skip every merged small file by name: a list as long as the
        # files compacted within one retention.
        covered_s, _ = timed(queries(store, experiment)["count_and_gmv"])
        purged = purge(store, retention_s=0)
        compacted_times, compacted_answers = measure(store, experiment, "compacted")
        for name, answer in fresh_answers.items():
            if not same(answer, after := compacted_answers[name]):
                raise SystemExit(f"{name} differs: {answer} on small files, {after} compacted")
    finally:
        shutil.rmtree(STORE, ignore_errors=True)
    summary = {
        "rows": rows,
        "files_before": FILES,
        "files_after": report.written_files,
        "files_deleted": purged.deleted,
        "compact_s": round(compact_s, 2),
        "compact_rows_per_s": round(rows / compact_s),
        "count_and_gmv_s_before_purge": round(covered_s, 4),
        "seconds_small_files": {k: round(v, 4) for k, v in fresh_times.items()},
        "seconds_compacted": {k: round(v, 4) for k, v in compacted_times.items()},
        "speedup": {k: round(fresh_times[k] / compacted_times[k], 2) for k in fresh_times},
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
