"""The event store: immutable Parquet files that many writers append and DuckDB reads live.

DuckDB allows one writing process per database file, and a writer locks readers out. So the
store is not a database file: each ingest worker writes every micro-batch as one Parquet file,
first under a temporary name, fsynced, then atomically renamed into a hive-style partition
``ingested/date=YYYY-MM-DD/`` under a name that starts with the time of the rename in ns (so
names order files by when they became visible). A reader's glob sees a batch entirely or not
at all, and any number of readers (and writers) work at once. The analysts' views over the
files live in ``store_views``.

Replays: every row keeps its Kafka topic, partition and offset. A partition is consumed in
offset order by one worker at a time, so the highest stored offset of a partition (its
watermark) tells exactly which records are already durable; a replayed record at or below it
is dropped before it is written.

Small files do not stay: the compactor (``compactor``) merges them into large files per event
date under ``compacted/``, and its manifest (``compaction_manifest``) says which files hold
what. ``current_ledger`` pins one consistent set of files to read; the fresh files alone
(``ledger_files``) are what live followers watch for new rows.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from streams.store.atomic_files import publish_new_file, write_atomically
from streams.store.compaction_manifest import CompactionManifest, ensure_guard, read_manifest
from streams.store.event_ids import DIGEST, DIGEST_SQL
from streams.store.ledger_schema import LedgerBatch, empty_ledger_table
from streams.store.partition_fences import Partition, PartitionFences

log = logging.getLogger(__name__)

LEDGER_DIR = "ingested"
SOURCES_FILE = "sources.json"
VIEWS_FILE = "views.json"
TABLE = re.compile(r"\{table:([\w/-]+)\}")  # a registered view's placeholder for a dataset
_SEED_NAME = "00000000000000000000-seed.parquet"
_SEED_DATE = "1970-01-01"


class SourceMismatch(RuntimeError):
    """The store holds events of another incarnation of the topic; offsets would collide."""


@dataclass(frozen=True)
class PinnedFiles:
    """One consistent set of a dataset's files, as of one version of the compaction manifest:
    read ``files`` and every stored row is read exactly once."""

    version: int
    compacted: tuple[str, ...]  # active compacted files, relative to the store root
    fresh: tuple[str, ...]  # fresh files present and not covered by a compacted one
    covered: frozenset[str]  # fresh files whose rows a compacted file holds (not in ``files``)
    offsets: Mapping[str, int]  # the ledger's: "topic/partition" -> highest offset compacted

    @property
    def files(self) -> tuple[str, ...]:
        return self.compacted + self.fresh


class EventStore:
    """Append-only Parquet ledger under ``root``; safe for concurrent writers and readers."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root).resolve()
        self.ledger_dir = self.root / LEDGER_DIR
        self.fences = PartitionFences(self.root)

    @property
    def ledger_glob(self) -> str:
        return self.dataset_glob(LEDGER_DIR)

    def ledger_files(self) -> list[str]:
        """The ledger's fresh files (see ``fresh_files``)."""
        return self.fresh_files(LEDGER_DIR)

    def fresh_files(self, dataset: str) -> list[str]:
        """A dataset's fresh files (the writers' own, compacted or not yet), relative to the
        root, in name order: the order in which they became visible."""
        return sorted(
            str(p.relative_to(self.root)) for p in (self.root / dataset).glob("*/*.parquet")
        )

    def current_ledger(self) -> PinnedFiles:
        return self.current_files(LEDGER_DIR)

    def current_files(
        self, dataset: str, manifest: CompactionManifest | None = None
    ) -> PinnedFiles:
        """The files to read for the whole of ``dataset`` as it is now (see ``PinnedFiles``),
        as of ``manifest`` if given (read before the listing: a file it covers is still there)."""
        manifest = manifest or read_manifest(self.root)
        part = manifest.of(dataset)
        covered = frozenset(part.covered)
        return PinnedFiles(
            version=manifest.version,
            compacted=tuple(sorted(part.files)),
            fresh=tuple(f for f in self.fresh_files(dataset) if f not in covered),
            covered=covered,
            offsets=manifest.offsets if dataset == LEDGER_DIR else {},
        )

    def dataset_glob(self, dataset: str) -> str:
        """The glob of a dataset's files (``<root>/<dataset>/date=*/*.parquet``)."""
        return str(self.root / dataset / "*" / "*.parquet")

    def init(self) -> None:
        """Create the ledger with a zero-row seed file, so that views bind on an empty store."""
        self.init_dataset(LEDGER_DIR, empty_ledger_table())
        ensure_guard(self.root)

    def init_dataset(self, dataset: str, empty: pa.Table) -> None:
        """Seed ``dataset`` with a zero-row file of its current schema.

        Views read the files by column name, so a column added later (older files lack it)
        still binds: the seed, rewritten whenever the schema grows, always holds it.
        """
        seed = self.seed_path(dataset)
        if not seed.exists() or not pq.read_schema(seed).equals(empty.schema):
            seed.parent.mkdir(parents=True, exist_ok=True)
            write_atomically(seed, self._parquet_writer(empty))

    def seed_path(self, dataset: str) -> Path:
        """The zero-row file that holds ``dataset``'s current schema (``init_dataset``)."""
        return self.root / dataset / f"date={_SEED_DATE}" / _SEED_NAME

    def register_views(self, views: Mapping[str, str]) -> None:
        """Add views that every connection to the store creates after its own (see
        ``store_views``): name -> SELECT, where ``{table:NAME}`` stands for every row of
        dataset NAME (``{dataset:NAME}``, of views registered before compaction existed, for
        the glob of its fresh files). The store need not know who stores what beside its
        ledger."""
        path = self.root / VIEWS_FILE
        current = self.registered_views()
        if current | dict(views) != current:
            write_atomically(path, json.dumps(current | dict(views), indent=1))

    def registered_views(self) -> dict[str, str]:
        path = self.root / VIEWS_FILE
        return json.loads(path.read_text()) if path.exists() else {}

    def datasets(self, views: Mapping[str, str] | None = None) -> list[str]:
        """The ledger and every dataset a registered view (of ``views``, by default those
        registered now) reads as ``{table:NAME}``: those the compactor merges (a glob over
        ``{dataset:NAME}`` could not skip merged files)."""
        views = self.registered_views() if views is None else views
        named = {m for select in views.values() for m in TABLE.findall(select)}
        return [LEDGER_DIR, *sorted(named - {LEDGER_DIR})]

    def bind_source(self, topic: str, topic_id: str) -> None:
        """Record which incarnation of ``topic`` feeds this store; refuse any other.

        Offsets restart at 0 when a topic is recreated or a new cluster is used, so events of
        a new incarnation would look like replays of the old one and be dropped.
        """
        path = self.root / SOURCES_FILE
        sources: dict[str, str] = json.loads(path.read_text()) if path.exists() else {}
        known = sources.get(topic)
        if known == topic_id:
            return
        if known is not None:
            raise SourceMismatch(
                f"the event store at {self.root} holds events of topic {topic!r} with id "
                f"{known}, but that topic now has id {topic_id} (recreated, or another "
                "cluster). Its offsets restart, so replays could not be told from new events: "
                "point PAGELLM_STORE_DIR at a new store for the new topic."
            )
        sources[topic] = topic_id
        write_atomically(path, json.dumps(sources, indent=1, sort_keys=True))

    def write_batch(
        self, batch: LedgerBatch, writer_id: str, claimed: Mapping[Partition, int] | None = None
    ) -> Path:
        """Make a batch durable as one file; returns its path once it is visible to readers.

        With ``claimed`` (the epochs of ``fences.claim``), ``Fenced`` refuses it if another
        writer has taken one of those partitions since.
        """
        return self.write_ledger(batch.to_table(ingested_at=datetime.now(UTC)), writer_id, claimed)

    def write_ledger(
        self, table: pa.Table, writer_id: str, claimed: Mapping[Partition, int] | None = None
    ) -> Path:
        """``write_batch`` for a batch already converted (``LedgerBatch.to_table``)."""
        guard = self.fences.publishing(claimed) if claimed is not None else None
        return self.write_table(LEDGER_DIR, table, writer_id, publish_under=guard)

    def write_table(
        self,
        dataset: str,
        table: pa.Table,
        writer_id: str,
        publish_under: contextlib.AbstractContextManager[object] | None = None,
    ) -> Path:
        """Append ``table`` to ``dataset`` as one file, atomically visible to readers. Its name
        (and date folder) is the time it became visible, in ns: views rely on that order."""

        def name_now() -> Path:
            now = time.time_ns()
            day = datetime.fromtimestamp(now / 1e9, UTC)
            name = f"{now:020d}-{writer_id}-{uuid.uuid4().hex[:8]}.parquet"
            return self.root / dataset / f"date={day:%Y-%m-%d}" / name

        staging = self.root / dataset
        staging.mkdir(parents=True, exist_ok=True)
        return publish_new_file(staging, self._parquet_writer(table), name_now, publish_under)

    @staticmethod
    def _parquet_writer(table: pa.Table) -> Callable[[BinaryIO], None]:
        return lambda sink: pq.write_table(table, sink, compression="zstd", compression_level=1)

    def stored_watermarks(self, topic: str, partitions: list[int]) -> dict[int, int]:
        """Highest stored offset per partition of ``topic`` (-1 where nothing is stored): the
        compaction manifest's, raised by a scan of the fresh files it does not cover."""
        ledger = self.current_ledger()
        marks = {p: ledger.offsets.get(f"{topic}/{p}", -1) for p in partitions}
        if not partitions or not ledger.fresh:
            return marks
        with duckdb.connect() as con:
            rows = con.execute(
                f"""SELECT kafka_partition, max(kafka_offset)
                    FROM read_parquet(?)
                    WHERE kafka_topic = ? AND kafka_partition IN ({",".join("?" * len(partitions))})
                    GROUP BY kafka_partition""",
                [self.absolute(ledger.fresh), topic, *partitions],
            ).fetchall()
        for partition, offset in rows:
            marks[int(partition)] = max(marks[int(partition)], int(offset))
        return marks

    def absolute(self, files: Iterable[str]) -> list[str]:
        """Absolute paths of files named relative to the root."""
        return [str(self.root / f) for f in files]

    def stored_event_ids(self, topic: str, partitions: list[int]) -> dict[int, np.ndarray]:
        """Per partition of ``topic``, the distinct digests (``event_id_digest``) of the accepted
        events stored from it, in ascending byte order (DuckDB sorts them faster than NumPy
        would). One scan of the store for all of them: it reads every file."""
        if not partitions:
            return {}
        files = self.absolute(self.current_ledger().files)
        with duckdb.connect() as con:
            table = con.sql(
                f"SELECT DISTINCT kafka_partition AS partition, {DIGEST_SQL} AS digest "
                "FROM read_parquet(?, union_by_name = true) "
                f"WHERE kafka_topic = ? AND kafka_partition IN ({','.join('?' * len(partitions))}) "
                "AND event_id IS NOT NULL AND reject_reason IS NULL ORDER BY partition, digest",
                params=[files, topic, *partitions],
            ).to_arrow_table()
        of = table.column("partition").to_numpy()
        digests = table.column("digest").combine_chunks().cast(pa.binary(16))
        everything = (
            np.frombuffer(
                digests.buffers()[1], DIGEST, count=len(digests), offset=digests.offset * 16
            )
            if len(digests)
            else np.empty(0, DIGEST)
        )
        starts = np.searchsorted(of, partitions, side="left")
        ends = np.searchsorted(of, partitions, side="right")
        return {p: everything[a:b].copy() for p, a, b in zip(partitions, starts, ends, strict=True)}

    def remove_orphaned_temporaries(self, older_than_s: float = 3600.0) -> int:
        """Delete temporary files a crashed writer left behind; they were never visible."""
        cutoff = time.time() - older_than_s
        removed = 0
        for tmp in self.root.rglob(".*.tmp"):
            if tmp.stat().st_mtime < cutoff:
                tmp.unlink(missing_ok=True)
                removed += 1
        return removed
