"""The compactor: merges the store's small fresh files into large files per period.

An ingest worker makes each micro-batch durable as one file, up to two a second, and the
derive worker writes a file per dataset per poll; a day of them costs every query thousands of
files to list and read. ``compact`` merges, per dataset, the fresh files old enough
(``min_age_s``) with the still-small compacted file of each period they touch into one file
per period, and commits the result by writing a new version of the manifest. The ledger's
period is the event date, its rows sorted by event time (so a filter on ``event_date`` skips
files and one on ``ts`` row groups); another dataset's is the day its rows were written.
``purge`` deletes what no reader has used for ``retention_s``. See ``compaction_manifest`` for
why readers see every row exactly once throughout.
"""

from __future__ import annotations

import logging
import shutil
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb
import pyarrow.parquet as pq

from streams.store.atomic_files import fsync_dir, move_into_place
from streams.store.compaction_manifest import (
    EVENT_DATE_SQL,
    CompactedDataset,
    CompactedFile,
    CompactionManifest,
    Guard,
    Retirement,
    compacted_dir,
    compaction_lock,
    read_manifest,
    write_guard,
    write_manifest,
)
from streams.store.event_store import LEDGER_DIR, EventStore
from streams.store.sql_literals import sql_literal

log = logging.getLogger(__name__)

_STAGING_PREFIX = ".staging-"


@dataclass(frozen=True)
class Layout:
    """How a dataset's compacted files are cut: by ``key`` (a column, its folder name), which a
    fresh row gets from ``period_sql``; rows in ``order`` (SQL, or "" for any order)."""

    key: str
    period_sql: str
    order: str


LEDGER_LAYOUT = Layout(
    "event_date", EVENT_DATE_SQL, "ts, kafka_topic, kafka_partition, kafka_offset"
)
WRITE_DATE_LAYOUT = Layout("date", "date", "")  # the fresh folders' own hive column


@dataclass(frozen=True)
class CompactionReport:
    version: int  # the manifest version now current
    fresh_files: int  # fresh files merged
    merged_files: int  # earlier compacted files merged again
    written_files: int  # compacted files written
    rows: int  # rows in the files written
    seconds: float
    more_waiting: bool = False  # a dataset had more fresh files than one run takes


@dataclass(frozen=True)
class PurgeReport:
    deleted: int  # files deleted
    readable_from: int  # views built from an older manifest version now refuse to run


@dataclass(frozen=True)
class CompactionStatus:
    """Where compaction stands, for ``pagellm status``."""

    version: int
    compacted_at: datetime | None  # None: never compacted
    compacted_files: int
    waiting_files: int  # fresh files no compacted file covers yet (seeds left out)
    oldest_waiting_s: float | None  # age of the oldest of them
    awaiting_deletion: int  # covered and retired files the purge has not deleted yet


def compaction_status(store: EventStore) -> CompactionStatus:
    manifest = read_manifest(store.root)
    now, waiting = time.time(), []
    for dataset in store.datasets():
        seed = str(store.seed_path(dataset).relative_to(store.root))
        waiting += [f for f in store.current_files(dataset, manifest).fresh if f != seed]
    ages = [now - int(Path(f).name.split("-", 1)[0]) / 1e9 for f in waiting]
    parts = manifest.datasets.values()
    return CompactionStatus(
        version=manifest.version,
        compacted_at=manifest.compacted_at,
        compacted_files=sum(len(p.files) for p in parts),
        waiting_files=len(waiting),
        oldest_waiting_s=max(ages, default=None),
        awaiting_deletion=sum(len(p.covered) + len(p.retired) for p in parts),
    )


@dataclass(frozen=True)
class _Merge:
    """One dataset's part of a compaction, before it is committed."""

    fresh: list[str]
    merged: list[str]
    written: dict[str, CompactedFile]
    offsets: list[tuple[str, int, int]]  # (topic, partition, highest offset) of fresh rows


def _scan(paths: list[str]) -> str:
    listed = ", ".join(sql_literal(p) for p in paths)
    return f"read_parquet([{listed}], hive_partitioning = true, union_by_name = true)"


def _fresh_candidates(
    store: EventStore, dataset: str, part: CompactedDataset, min_age_s: float
) -> list[str]:
    """Fresh files no compacted file covers yet, written at least ``min_age_s`` ago (the seed,
    which only carries the schema, stays)."""
    seed = str(store.seed_path(dataset).relative_to(store.root))
    cutoff = time.time() - min_age_s
    candidates = []
    for name in store.fresh_files(dataset):
        if name == seed or name in part.covered:
            continue
        try:
            if (store.root / name).stat().st_mtime <= cutoff:
                candidates.append(name)
        except FileNotFoundError:  # deleted by hand meanwhile; nothing to merge
            continue
    return candidates


def _publish(store: EventStore, dataset: str, staged: Path) -> dict[str, CompactedFile]:
    """Move the staged files (``KEY=PERIOD/*.parquet``) into place, durably; their entries."""
    written: dict[str, CompactedFile] = {}
    for part in sorted(staged.glob("*=*/*.parquet")):
        name = f"{time.time_ns():020d}-{uuid.uuid4().hex[:8]}.parquet"
        target = compacted_dir(store.root) / dataset / part.parent.name / name
        move_into_place(part, target)
        written[str(target.relative_to(store.root))] = CompactedFile(
            period=part.parent.name.split("=", 1)[1],
            rows=pq.ParquetFile(target).metadata.num_rows,
            bytes=target.stat().st_size,
        )
    return written


def _periods_and_offsets(
    con: duckdb.DuckDBPyConnection, dataset: str, layout: Layout, fresh_scan: str
) -> tuple[set[str], list[tuple[str, int, int]]]:
    """The periods the fresh rows fall in and, for the ledger, the highest offset of each
    partition they hold, in one pass: each pass over thousands of small files pays for
    opening every one of them."""
    if dataset != LEDGER_DIR:
        found = con.execute(f"SELECT DISTINCT {layout.period_sql} FROM {fresh_scan}").fetchall()
        return {str(d) for (d,) in found}, []
    rows = con.execute(
        f"SELECT {layout.period_sql}, kafka_topic, kafka_partition, max(kafka_offset) "
        f"FROM {fresh_scan} GROUP BY ALL"
    ).fetchall()
    offsets = [(t, p, o) for _, t, p, o in rows if t is not None]  # compact() keeps the max
    return {str(d) for d, *_ in rows}, offsets


def _merge(
    store: EventStore, dataset: str, part: CompactedDataset, fresh: list[str], target_bytes: int
) -> _Merge:
    """Write ``fresh`` (and the small compacted files of the periods it touches) as one file
    per period, published but not yet in the manifest."""
    layout = LEDGER_LAYOUT if dataset == LEDGER_DIR else WRITE_DATE_LAYOUT
    staged = compacted_dir(store.root) / f"{_STAGING_PREFIX}{uuid.uuid4().hex}"
    # The seed is read along: it holds every column of the current schema.
    fresh_scan = _scan([str(store.seed_path(dataset)), *store.absolute(fresh)])
    with duckdb.connect() as con:
        periods, offsets = _periods_and_offsets(con, dataset, layout, fresh_scan)
        merged = [
            name
            for name, entry in part.files.items()
            if entry.period in periods and entry.bytes < target_bytes
        ]
        added = "" if layout.period_sql == layout.key else f", {layout.period_sql} AS {layout.key}"
        rows = f"SELECT *{added} FROM {fresh_scan}"
        if merged:
            rows += f" UNION ALL BY NAME SELECT * FROM {_scan(store.absolute(merged))}"
        if layout.order:
            rows += f" ORDER BY {layout.order}"
        con.execute(
            f"COPY ({rows}) TO {sql_literal(str(staged))} "
            f"(FORMAT parquet, PARTITION_BY ({layout.key}), COMPRESSION zstd, "
            "COMPRESSION_LEVEL 1)"
        )
    written = _publish(store, dataset, staged)
    shutil.rmtree(staged, ignore_errors=True)
    return _Merge(fresh, merged, written, offsets)


def compact(
    store: EventStore,
    min_age_s: float = 300.0,
    target_bytes: int = 256 << 20,
    max_fresh_files: int = 20_000,
) -> CompactionReport:
    """Merge each dataset's fresh files older than ``min_age_s`` (at most ``max_fresh_files``
    of them, the oldest first) into compacted files; a compacted file of a touched period
    smaller than ``target_bytes`` is merged again, a larger one is left as it is."""
    started = time.perf_counter()
    with compaction_lock(store.root):
        for leftover in compacted_dir(store.root).glob(f"{_STAGING_PREFIX}*"):
            shutil.rmtree(leftover, ignore_errors=True)  # a crashed run's; never visible
        manifest = read_manifest(store.root)
        merges: dict[str, _Merge] = {}
        more_waiting = False
        for dataset in store.datasets():
            part = manifest.of(dataset)
            candidates = _fresh_candidates(store, dataset, part, min_age_s)
            more_waiting |= len(candidates) > max_fresh_files
            if fresh := candidates[:max_fresh_files]:
                merges[dataset] = _merge(store, dataset, part, fresh, target_bytes)
        if not merges:
            return CompactionReport(manifest.version, 0, 0, 0, 0, time.perf_counter() - started)
        version = manifest.version + 1
        retirement = Retirement(version=version, at=datetime.now(UTC))
        datasets = dict(manifest.datasets)
        offsets = dict(manifest.offsets)
        for dataset, m in merges.items():
            part = manifest.of(dataset)
            datasets[dataset] = CompactedDataset(
                files={n: e for n, e in part.files.items() if n not in m.merged} | m.written,
                covered=part.covered | dict.fromkeys(m.fresh, retirement),
                retired=part.retired | dict.fromkeys(m.merged, retirement),
            )
            for topic, partition, offset in m.offsets:
                key = f"{topic}/{partition}"
                offsets[key] = max(offsets.get(key, -1), int(offset))
        write_manifest(
            store.root,
            CompactionManifest(
                version=version,
                compacted_at=retirement.at,
                readable_from=manifest.readable_from,
                datasets=datasets,
                offsets=offsets,
            ),
        )
        write_guard(store.root, Guard(version=version, readable_from=manifest.readable_from))
    report = CompactionReport(
        version=version,
        fresh_files=sum(len(m.fresh) for m in merges.values()),
        merged_files=sum(len(m.merged) for m in merges.values()),
        written_files=sum(len(m.written) for m in merges.values()),
        rows=sum(e.rows for m in merges.values() for e in m.written.values()),
        seconds=time.perf_counter() - started,
        more_waiting=more_waiting,
    )
    log.info("compaction %s", report)
    return report


def purge(store: EventStore, retention_s: float = 3600.0) -> PurgeReport:
    """Delete covered fresh files and retired compacted files that no manifest version of the
    last ``retention_s`` reads."""
    with compaction_lock(store.root):
        manifest = read_manifest(store.root)
        due_at = datetime.now(UTC) - timedelta(seconds=retention_s)
        # A compactor that died between publishing its files and committing the manifest left
        # them unlisted: no reader ever saw them.
        listed = {n for p in manifest.datasets.values() for n in (*p.files, *p.retired)}
        orphans = [
            p
            for p in compacted_dir(store.root).glob("**/*=*/*.parquet")
            if str(p.relative_to(store.root)) not in listed
        ]
        for orphan in orphans:
            orphan.unlink()
        due = {
            name: r
            for part in manifest.datasets.values()
            for name, r in (part.covered | part.retired).items()
            if r.at <= due_at
        }
        if not due:
            return PurgeReport(len(orphans), manifest.readable_from)
        readable_from = max(manifest.readable_from, *(r.version for r in due.values()))
        # Views that could still read the files refuse from now on, before any is deleted.
        write_guard(store.root, Guard(version=manifest.version, readable_from=readable_from))
        for name in due:
            (store.root / name).unlink(missing_ok=True)
        for directory in {(store.root / name).parent for name in due}:
            fsync_dir(directory)
        kept = {
            dataset: CompactedDataset(
                files=part.files,
                covered={n: r for n, r in part.covered.items() if n not in due},
                retired={n: r for n, r in part.retired.items() if n not in due},
            )
            for dataset, part in manifest.datasets.items()
        }
        write_manifest(
            store.root,
            manifest.model_copy(update={"readable_from": readable_from, "datasets": kept}),
        )
    return PurgeReport(len(due) + len(orphans), readable_from)
