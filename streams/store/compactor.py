"""The compactor: merges the ledger's small fresh files into large files per event date.

An ingest worker makes each micro-batch durable as one file, up to two a second; a day of
them costs every query thousands of footers to read. ``compact`` merges the fresh files old
enough (``min_age_s``) with the still-small compacted file of each event date they touch into
one file per event date, its rows sorted by event time (so a filter on ``ts`` skips row groups
and one on ``event_date`` skips files), and commits the result by writing a new version of
the manifest. ``purge`` deletes what no reader has used for ``retention_s``. See
``compaction_manifest`` for why readers see every row exactly once throughout.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb
import pyarrow.parquet as pq

from streams.store.atomic_files import fsync_dir
from streams.store.compaction_manifest import (
    EVENT_DATE_SQL,
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
class CompactionReport:
    version: int  # the manifest version now current
    fresh_files: int  # fresh files merged
    merged_files: int  # earlier compacted files merged again
    written_files: int  # compacted files written
    rows: int  # rows in the files written
    seconds: float


@dataclass(frozen=True)
class PurgeReport:
    deleted: int  # files deleted
    readable_from: int  # views built from an older manifest version now refuse to run


def _scan(paths: list[str]) -> str:
    listed = ", ".join(sql_literal(p) for p in paths)
    return f"read_parquet([{listed}], hive_partitioning = true, union_by_name = true)"


def _fresh_candidates(
    store: EventStore, manifest: CompactionManifest, min_age_s: float
) -> list[str]:
    """Fresh files no compacted file covers yet, written at least ``min_age_s`` ago (the seed,
    which only carries the schema, stays)."""
    seed = str(store.seed_path(LEDGER_DIR).relative_to(store.root))
    cutoff = time.time() - min_age_s
    candidates = []
    for name in store.ledger_files():
        if name == seed or name in manifest.covered:
            continue
        try:
            if (store.root / name).stat().st_mtime <= cutoff:
                candidates.append(name)
        except FileNotFoundError:  # deleted by hand meanwhile; nothing to merge
            continue
    return candidates


def _publish(store: EventStore, staged: Path) -> dict[str, CompactedFile]:
    """Move the staged files (``event_date=D/*.parquet``) into place, durably; their entries."""
    written: dict[str, CompactedFile] = {}
    for part in sorted(staged.glob("event_date=*/*.parquet")):
        with open(part, "rb") as f:
            os.fsync(f.fileno())
        event_date = part.parent.name.split("=", 1)[1]
        name = f"{time.time_ns():020d}-{uuid.uuid4().hex[:8]}.parquet"
        target = compacted_dir(store.root) / part.parent.name / name
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(part, target)
        fsync_dir(target.parent)
        written[str(target.relative_to(store.root))] = CompactedFile(
            event_date=event_date,
            rows=pq.ParquetFile(target).metadata.num_rows,
            bytes=target.stat().st_size,
        )
    return written


def compact(
    store: EventStore,
    min_age_s: float = 300.0,
    target_bytes: int = 256 << 20,
    max_fresh_files: int = 20_000,
) -> CompactionReport:
    """Merge the fresh files older than ``min_age_s`` (at most ``max_fresh_files`` of them, the
    oldest first) into compacted files; a compacted file of a touched event date smaller than
    ``target_bytes`` is merged again, a larger one is left as it is."""
    started = time.perf_counter()
    with compaction_lock(store.root):
        for leftover in compacted_dir(store.root).glob(f"{_STAGING_PREFIX}*"):
            shutil.rmtree(leftover, ignore_errors=True)  # a crashed run's; never visible
        manifest = read_manifest(store.root)
        fresh = _fresh_candidates(store, manifest, min_age_s)[:max_fresh_files]
        if not fresh:
            return CompactionReport(manifest.version, 0, 0, 0, 0, time.perf_counter() - started)
        staged = compacted_dir(store.root) / f"{_STAGING_PREFIX}{uuid.uuid4().hex}"
        # The seed is read along: it holds every column of the current schema.
        fresh_scan = _scan([str(store.seed_path(LEDGER_DIR)), *store.absolute(fresh)])
        with duckdb.connect() as con:
            found = con.execute(f"SELECT DISTINCT {EVENT_DATE_SQL} FROM {fresh_scan}").fetchall()
            dates = {str(d) for (d,) in found}
            merged = [
                name
                for name, entry in manifest.files.items()
                if entry.event_date in dates and entry.bytes < target_bytes
            ]
            rows = f"SELECT *, {EVENT_DATE_SQL} AS event_date FROM {fresh_scan}"
            if merged:
                rows += f" UNION ALL BY NAME SELECT * FROM {_scan(store.absolute(merged))}"
            con.execute(
                f"COPY ({rows} ORDER BY ts, kafka_topic, kafka_partition, kafka_offset) "
                f"TO {sql_literal(str(staged))} (FORMAT parquet, PARTITION_BY (event_date), "
                "COMPRESSION zstd, COMPRESSION_LEVEL 1)"
            )
            offsets = con.execute(
                f"SELECT kafka_topic, kafka_partition, max(kafka_offset) FROM {fresh_scan} "
                "WHERE kafka_topic IS NOT NULL GROUP BY ALL"
            ).fetchall()
        written = _publish(store, staged)
        shutil.rmtree(staged, ignore_errors=True)
        version = manifest.version + 1
        now = datetime.now(UTC)
        retirement = Retirement(version=version, at=now)
        new_offsets = dict(manifest.offsets)
        for topic, partition, offset in offsets:
            key = f"{topic}/{partition}"
            new_offsets[key] = max(new_offsets.get(key, -1), int(offset))
        write_manifest(
            store.root,
            CompactionManifest(
                version=version,
                readable_from=manifest.readable_from,
                files={n: e for n, e in manifest.files.items() if n not in merged} | written,
                covered=manifest.covered | dict.fromkeys(fresh, retirement),
                retired=manifest.retired | dict.fromkeys(merged, retirement),
                offsets=new_offsets,
            ),
        )
        write_guard(store.root, Guard(version=version, readable_from=manifest.readable_from))
    report = CompactionReport(
        version=version,
        fresh_files=len(fresh),
        merged_files=len(merged),
        written_files=len(written),
        rows=sum(e.rows for e in written.values()),
        seconds=time.perf_counter() - started,
    )
    log.info("compaction %s", report)
    return report


def purge(store: EventStore, retention_s: float = 3600.0) -> PurgeReport:
    """Delete covered fresh files and retired compacted files that no manifest version of the
    last ``retention_s`` reads."""
    with compaction_lock(store.root):
        manifest = read_manifest(store.root)
        due_at = datetime.now(UTC) - timedelta(seconds=retention_s)
        due = {n: r for n, r in (manifest.covered | manifest.retired).items() if r.at <= due_at}
        # A compactor that died between publishing its files and committing the manifest left
        # them unlisted: no reader ever saw them.
        listed = set(manifest.files) | set(manifest.retired)
        orphans = [
            p
            for p in compacted_dir(store.root).glob("event_date=*/*.parquet")
            if str(p.relative_to(store.root)) not in listed
        ]
        for orphan in orphans:
            orphan.unlink()
        if not due:
            return PurgeReport(len(orphans), manifest.readable_from)
        readable_from = max(manifest.readable_from, *(r.version for r in due.values()))
        # Views that could still read the files refuse from now on, before any is deleted.
        write_guard(store.root, Guard(version=manifest.version, readable_from=readable_from))
        for name in due:
            (store.root / name).unlink(missing_ok=True)
        for directory in {(store.root / name).parent for name in due}:
            fsync_dir(directory)
        write_manifest(
            store.root,
            manifest.model_copy(
                update={
                    "readable_from": readable_from,
                    "covered": {n: r for n, r in manifest.covered.items() if n not in due},
                    "retired": {n: r for n, r in manifest.retired.items() if n not in due},
                }
            ),
        )
    return PurgeReport(len(due) + len(orphans), readable_from)
