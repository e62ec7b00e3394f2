"""``make bench-compact``: the same queries over a store of small files and over its compaction.

1. A store as an ingest worker leaves it after ``BENCH_COMPACT_HOURS`` (24) hours of writing
   ``BENCH_COMPACT_FILES_PER_S`` (2) micro-batches a second: 172,800 files of
   ``BENCH_COMPACT_ROWS`` (100) events each, in event-time order (a micro-batch holds the
   events of a moment), from ``abtest.synthetic_traffic``'s two-variant experiment over 7 days.
2. The reference, the store as it is (every file fresh, and, as nearly all of a real store's
   files, more than a minute old): each query's median wall time over
   ``BENCH_COMPACT_RUNS_SMALL`` (1) runs, each from a new ``connect_store`` connection, whose
   time is reported too.
3. ``compact`` as the service runs it (min age 0, at most 20,000 fresh files a round, rounds
   until none wait) while a reader process counts ``events`` over and over, each count from a
   new connection, and checks it against the store's rows (``reader_errors``,
   ``reader_wrong_counts``); then the count query again while the merged small files are
   still there (the views skip them by name); then ``purge`` (retention 0).
4. The same queries over the compacted store, median of three runs.

Queries: a count and GMV over ``events``; events per user (a full scan with a large group);
one event date's events (what a filter on ``event_date`` prunes); one hour's events (the point
query: a filter on ``ts``, which the compacted files' sorted row groups prune); the A/B report's
query (``abtest.metrics_sql``); the ingest worker's watermark lookup on restart. Every query
must give the same answer on both layouts, else the run fails. The last line printed is the
JSON summary. ``BENCH_COMPACT_STORE`` moves the store (var/bench-compact); it is removed after.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import statistics
import subprocess
import sys
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
from streams.store.atomic_files import write_atomically
from streams.store.compaction_manifest import read_manifest
from streams.store.compactor import CompactionReport, compact, purge
from streams.store.event_store import LEDGER_DIR, EventStore
from streams.store.store_views import CLOCK_MARGIN_S, connect_store
from tests.ab_simulation import bench_store

HOURS = float(os.environ.get("BENCH_COMPACT_HOURS", 24))
FILES_PER_S = float(os.environ.get("BENCH_COMPACT_FILES_PER_S", 2))
FILES = round(HOURS * 3600 * FILES_PER_S)
ROWS = int(os.environ.get("BENCH_COMPACT_ROWS", 100))
STORE = Path(os.environ.get("BENCH_COMPACT_STORE", "var/bench-compact"))
START = datetime(2026, 10, 1, tzinfo=UTC)
END = START + timedelta(days=7)
RUNS = 3
# A query over 172,800 small files takes minutes, most of it binding the views to them.
RUNS_SMALL = int(os.environ.get("BENCH_COMPACT_RUNS_SMALL", 1))
# Which queries to time (comma-separated; all by default).
QUERIES = os.environ.get("BENCH_COMPACT_QUERIES", "")
REQUIRED_QUERIES = ("count_and_gmv", "point_query")
POINT_HOUR = START + timedelta(days=3, hours=12)
console = Console(stderr=True, soft_wrap=True)


def first_events(experiment: Experiment, rows: int) -> list[pa.Table]:
    """The first ``rows`` events of the generated traffic, chunk by chunk: no chunk past them
    is generated (at 17M events, generating a spare half took the run's peak to 18.7 GB)."""
    # About ten events a user: a fifth of the events' worth of users is more than enough.
    chunks, held = [], 0
    for chunk in synthetic_traffic(experiment, rows // 5, window_end=END, seed=1):
        chunks.append(chunk.slice(0, rows - held))
        held += chunks[-1].num_rows
        if held == rows:
            return chunks
    raise SystemExit(f"the generated traffic holds {held} events, fewer than {rows}")


def generate(store: EventStore, experiment: Experiment) -> int:
    """Write the small files; returns the number of events."""
    events = pa.concat_tables(first_events(experiment, FILES * ROWS)).sort_by("ts")
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

    every = {
        "count_and_gmv": sql("SELECT count(*), sum(gmv) FROM events"),
        "events_per_user": sql(
            "SELECT count(*), sum(n) FROM (SELECT user_id, count(*) AS n FROM events GROUP BY 1)"
        ),
        "one_event_date": sql(f"SELECT count(*) FROM events WHERE event_date = DATE '{day}'"),
        "point_query": sql(
            "SELECT count(*), sum(gmv) FROM events WHERE ts >= "
            f"'{POINT_HOUR.isoformat()}' AND ts < '{(POINT_HOUR + timedelta(hours=1)).isoformat()}'"
        ),
        "ab_report": lambda: query_variant_data(connect_store(store.root), experiment, END).phases,
        "watermarks": lambda: store.stored_watermarks(SYNTHETIC_TOPIC, [0]),
        "connect": lambda: connect_store(store.root).close(),
    }
    chosen = QUERIES.split(",") if QUERIES else list(every)
    if not set(REQUIRED_QUERIES) <= set(chosen) <= set(every):
        raise SystemExit(
            f"BENCH_COMPACT_QUERIES={QUERIES!r}: choose from {list(every)}, "
            f"including {REQUIRED_QUERIES} (the summary's rows and point_query_speedup)"
        )
    return {name: every[name] for name in chosen}


def timed(run: Callable[[], object], runs: int = RUNS) -> tuple[float, object]:
    seconds, answer = [], None
    for _ in range(runs):
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
    store: EventStore, experiment: Experiment, label: str, runs: int = RUNS
) -> tuple[dict[str, float], dict[str, object]]:
    times, answers = {}, {}
    for name, run in queries(store, experiment).items():
        times[name], answers[name] = timed(run, runs)
        console.print(f"{label}: {name} {times[name]:.3f} s")
    return times, answers


def count_continuously(root: Path, expected: int, stop: Path, progress: Path) -> None:
    """The reader process: count ``events`` from a new connection until ``stop`` exists,
    recording after each count how many ran, failed, and differed from ``expected``."""
    tally = {"queries": 0, "errors": 0, "wrong_counts": 0, "first_error": None, "seconds": []}
    while not stop.exists():
        started = time.perf_counter()
        try:
            con = connect_store(root)
            (count,) = con.execute("SELECT count(*) FROM events").fetchone()
            con.close()
            tally["wrong_counts"] += count != expected
        except Exception as e:  # any failure is a finding: counted, the first one kept
            tally["errors"] += 1
            tally["first_error"] = tally["first_error"] or f"{type(e).__name__}: {e}"[:500]
        tally["queries"] += 1
        tally["seconds"].append(round(time.perf_counter() - started, 3))
        write_atomically(progress, json.dumps(tally))


def reader_tally(progress: Path) -> dict:
    return json.loads(progress.read_text()) if progress.exists() else {"queries": 0}


def start_reader(store: EventStore, expected: int) -> tuple[subprocess.Popen, Path, Path]:
    """A reader in a process of its own, as an analyst's would be; returns once it has counted
    once, so that it is counting when the compaction starts."""
    stop, progress = store.root / "reader.stop", store.root / "reader.json"
    reader = subprocess.Popen(
        [sys.executable, "-m", "tests.benchmarks.bench_compact", "--reader", str(store.root),
         str(expected), str(stop), str(progress)]
    )  # fmt: skip
    while reader_tally(progress)["queries"] == 0:
        if reader.poll() is not None:
            raise SystemExit(f"the reader exited with {reader.returncode} before its first count")
        time.sleep(0.5)  # polls a file the reader writes; minutes pass before the first count
    return reader, stop, progress


def compact_in_rounds(store: EventStore) -> list[CompactionReport]:
    """``compact`` as the service runs it: rounds of at most 20,000 fresh files until none wait."""
    rounds: list[CompactionReport] = []
    while not rounds or rounds[-1].more_waiting:
        rounds.append(compact(store, min_age_s=0))
        console.print(f"compaction round {len(rounds)}: {rounds[-1].fresh_files} fresh files")
    return rounds


def main() -> None:
    logging.basicConfig(level=logging.WARNING)
    store, experiment = bench_store(STORE, START, END)
    try:
        rows = generate(store, experiment)
        # Views glob only the files of the last minute (the rest they name, see store_views);
        # nearly all of a real store's files are older than that, so these must be too.
        console.print(f"waiting {CLOCK_MARGIN_S} s for the files to be a minute old")
        time.sleep(CLOCK_MARGIN_S)
        fresh_times, fresh_answers = measure(store, experiment, "small files", RUNS_SMALL)
        rows_before = fresh_answers["count_and_gmv"][0][0]
        if rows_before != rows:
            raise SystemExit(f"the small files hold {rows_before} events of the {rows} written")
        console.print("starting the reader (it counts once before the compaction starts)")
        reader, stop, progress = start_reader(store, rows)
        started = time.perf_counter()
        rounds = compact_in_rounds(store)
        compact_s = time.perf_counter() - started
        stop.touch()
        if reader.wait() != 0:
            raise SystemExit(f"the reader exited with {reader.returncode}")
        tally = reader_tally(progress)
        # Until the purge, views skip every merged small file by name: a list as long as the
        # files compacted within one retention.
        covered_s, _ = timed(queries(store, experiment)["count_and_gmv"])
        purged = purge(store, retention_s=0)
        manifest = read_manifest(store.root)
        files_after = sum(len(manifest.of(d).files) for d in store.datasets())
        compacted_times, compacted_answers = measure(store, experiment, "compacted")
        for name, answer in fresh_answers.items():
            if not same(answer, after := compacted_answers[name]):
                raise SystemExit(f"{name} differs: {answer} on small files, {after} compacted")
    finally:
        shutil.rmtree(STORE, ignore_errors=True)
    summary = {
        "files_before": FILES,
        "files_after": files_after,
        "rows_generated": rows,
        "rows_before": rows_before,
        "rows_after": compacted_answers["count_and_gmv"][0][0],
        "reader_queries": tally["queries"],
        "reader_errors": tally["errors"],
        "reader_wrong_counts": tally["wrong_counts"],
        "reader_first_error": tally["first_error"],
        "reader_query_s": tally["seconds"],
        "point_query_speedup": round(
            fresh_times["point_query"] / compacted_times["point_query"], 1
        ),
        "compaction_rounds": len(rounds),
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
    if sys.argv[1:2] == ["--reader"]:
        root, expected, stop, progress = sys.argv[2:]
        count_continuously(Path(root), int(expected), Path(stop), Path(progress))
    else:
        main()
