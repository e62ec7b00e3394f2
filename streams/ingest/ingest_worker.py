"""The ingest worker: a faust-streaming app that turns the events and catalogue topics into
the event store.

Per micro-batch (read by ``batch_consumer.BatchConsumer``): drop records the store already
holds (replays), validate the rest (the value, and the key: the record's user or item id),
mark an event whose id its partition already holds as a duplicate (``event_id_index``), send
each rejected record to the dead-letter topic with its reason and raw bytes (``dead_letter``:
as a reference when too large; a send that fails is noted and does not stop the partition,
since the store keeps the raw bytes too), write the whole batch (accepted and rejected rows)
as one durable Parquet file (an accepted event holding a value the ledger's columns cannot
hold is parked there as rejected, with its raw bytes), and only then commit the batch's
offsets, so a committed offset always covers durable data: a crash at any point replays at
most the batch in flight, and the store's watermarks drop what was already written.
At-least-once delivery plus an idempotent store gives each accepted record exactly once in the
store.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import faust
import pyarrow as pa
from aiokafka import TopicPartition

from schemas import InvalidEvent, parse_catalogue_deletion, parse_catalogue_item, parse_event
from streams.ingest.batch_consumer import EXIT_UNPERSISTED, BatchConsumer
from streams.ingest.dead_letter import DeadLetter, Reject, dead_letter_all
from streams.ingest.event_id_index import EventIdIndex
from streams.ingest.record_keys import key_problem
from streams.ingest.topics import topic_id
from streams.settings import StreamSettings
from streams.store.event_ids import event_id_digest
from streams.store.event_store import EventStore
from streams.store.ledger_schema import UNSTORABLE, LedgerBatch, SourceRecord
from streams.store.partition_fences import Partition
from streams.store.store_views import write_catalog

log = logging.getLogger(__name__)

_PARKED_AT_WRITE = "not sent: found unstorable after the batch's dead letters were sent"

# A store write that keeps failing is retried this many times; then the process exits
# without committing (``EXIT_UNPERSISTED``), and a restart replays the batch.
_WRITE_ATTEMPTS = 5


@dataclass
class IngestCounters:
    accepted: int = 0
    rejected: int = 0
    replays_dropped: int = 0
    batches: int = 0
    dead_letters_failed: int = 0
    not_owned_skipped: int = 0
    duplicates: int = 0


class Ingestor:
    """The batch logic of the worker, independent of faust's plumbing."""

    def __init__(
        self,
        store: EventStore,
        settings: StreamSettings,
        writer_id: str,
        owns: Callable[[str, int], bool] = lambda _topic, _partition: True,
    ) -> None:
        self.store = store
        self.owns = owns  # is (topic, partition) assigned to this worker now, as Kafka says
        self.settings = settings
        self.writer_id = writer_id
        self.counters = IngestCounters()
        self._watermarks: dict[Partition, int] = {}
        self._claimed: dict[Partition, int] = {}  # partition -> the epoch this worker holds
        self._event_ids: dict[Partition, EventIdIndex] = {}
        self._skew = timedelta(seconds=settings.max_clock_skew_s)

    def forget_partitions(self, partitions: Iterable[Partition]) -> None:
        """Drop what is cached of partitions another worker may now write."""
        for topic, partition in partitions:
            self._watermarks.pop((topic, partition), None)
            self._claimed.pop((topic, partition), None)
            self._event_ids.pop((topic, partition), None)

    def _load_watermarks(self, records: Sequence[SourceRecord]) -> None:
        """On a partition's first records here: claim it (fencing out any earlier writer),
        then read how far the store holds it, and which event ids. A partition Kafka no longer
        assigns here is not claimed: its records, still buffered from before a revocation, are
        its new owner's."""
        missing: dict[str, set[int]] = {}
        for r in records:
            if (r.topic, r.partition) not in self._watermarks and self.owns(r.topic, r.partition):
                missing.setdefault(r.topic, set()).add(r.partition)
        for topic, partitions in missing.items():
            claims = self.store.fences.claim([(topic, p) for p in partitions], self.writer_id)
            self._claimed.update(claims)
            marks = self.store.stored_watermarks(topic, sorted(partitions))
            if topic != self.settings.catalogue_topic:
                stored = self.store.stored_event_ids(topic, sorted(partitions))
                for partition, digests in stored.items():
                    self._event_ids[(topic, partition)] = EventIdIndex(digests)
            for partition, offset in marks.items():
                self._watermarks[(topic, partition)] = offset
                log.info("partition %s[%d]: stored up to offset %d", topic, partition, offset)

    def build_batch(
        self, records: Sequence[tuple[SourceRecord, bytes | None]]
    ) -> tuple[LedgerBatch, list[Reject]]:
        """Validate a batch; returns its ledger rows and the rejects for the dead-letter topic."""
        self._load_watermarks([source for source, _ in records])
        batch = LedgerBatch()
        rejects: list[Reject] = []
        event_rows: dict[Partition, list[tuple[int, str]]] = {}  # (row, event id), in order
        now = datetime.now(UTC)
        for source, value in records:
            mark = self._watermarks.get((source.topic, source.partition))
            if mark is None:
                self.counters.not_owned_skipped += 1
                continue
            if source.offset <= mark:
                self.counters.replays_dropped += 1
                continue
            try:
                event_id = self._add_valid(batch, source, value, now)
            except InvalidEvent as exc:
                row = batch.add_rejected(value, exc.reason, source)
                rejects.append(Reject(source, value, exc.reason, row))
                continue
            if event_id is not None:
                rows = event_rows.setdefault((source.topic, source.partition), [])
                rows.append((len(batch) - 1, event_id))
        self._mark_duplicates(batch, event_rows)
        return batch, rejects

    def _add_valid(
        self, batch: LedgerBatch, source: SourceRecord, value: bytes | None, now: datetime
    ) -> str | None:
        """Add the record as accepted and return its event id (None for a catalogue record),
        or raise ``InvalidEvent`` with the reason."""
        if value is None and source.topic == self.settings.catalogue_topic:
            batch.add_catalogue_deletion(parse_catalogue_deletion(source.key), source)
            return None
        if value is None:
            raise InvalidEvent("value: null (a tombstone or an empty send); expected a JSON object")
        if source.topic == self.settings.catalogue_topic:
            item = parse_catalogue_item(value)
            if problem := key_problem(source.key, item.item_id, "item_id"):
                raise InvalidEvent(problem)
            batch.add_catalogue_item(item, source)
            return None
        event = parse_event(value, now=now, max_clock_skew=self._skew)
        if problem := key_problem(source.key, event.user_id, "user_id"):
            raise InvalidEvent(problem)
        batch.add_accepted(event, source)
        return event.event_id

    def _mark_duplicates(
        self, batch: LedgerBatch, event_rows: dict[Partition, list[tuple[int, str]]]
    ) -> None:
        """Flag each accepted event whose id its partition already held, or held earlier in
        the batch: one index lookup per partition and batch."""
        for partition, rows in event_rows.items():
            digests = [event_id_digest(event_id) for _, event_id in rows]
            first = self._event_ids[partition].add_all(digests)
            for (row, _), is_first in zip(rows, first, strict=True):
                batch.columns["duplicate"][row] = not is_first
                self.counters.duplicates += not is_first

    def commit_batch(
        self, batch: LedgerBatch, records: Sequence[tuple[SourceRecord, bytes | None]]
    ) -> None:
        """Write the batch durably, then advance the watermarks it covers."""
        sources = [source for source, _ in records]
        if len(batch):
            table = self._ledger_table(batch, records)
            for attempt in range(1, _WRITE_ATTEMPTS + 1):
                written = {(r.topic, r.partition) for r in sources} & self._claimed.keys()
                claimed = {p: self._claimed[p] for p in written}
                try:
                    self.store.write_ledger(table, self.writer_id, claimed)
                    break
                except OSError as exc:
                    log.error("store write failed (attempt %d): %s", attempt, exc)
                    if attempt == _WRITE_ATTEMPTS:
                        raise
                    time.sleep(0.2 * 2**attempt)
        for r in sources:
            key = (r.topic, r.partition)
            if key in self._watermarks:
                self._watermarks[key] = max(self._watermarks[key], r.offset)
        self.counters.accepted += batch.accepted
        self.counters.rejected += batch.rejected
        self.counters.batches += 1

    def _ledger_table(
        self, batch: LedgerBatch, records: Sequence[tuple[SourceRecord, bytes | None]]
    ) -> pa.Table:
        """The batch as the ledger's rows. An accepted record holding a value that its column's
        type cannot hold (the schema let it through, the store cannot keep it) would fail this
        batch's write at every restart and stop its partition for good: it is parked as a
        rejected row instead, with the reason and its raw bytes."""
        try:
            return batch.to_table()
        except UNSTORABLE:
            pass
        raw = {(s.topic, s.partition, s.offset): value for s, value in records}
        c = batch.columns
        for row, problem in sorted(batch.unstorable_rows().items()):
            if c["reject_reason"][row] is not None:
                continue  # a rejected row holds bytes and text only: nothing to park
            key = (c["kafka_topic"][row], c["kafka_partition"][row], c["kafka_offset"][row])
            if c["type"][row] != "catalogue":
                self._unclaim_event_id(batch, row)
            reason = f"store: the ledger cannot hold this record's {problem}"
            batch.park(row, reason, raw[key], dead_letter=_PARKED_AT_WRITE)
            log.error("%s[%d] offset %d parked: %s", *key, reason)
        return batch.to_table()

    def _unclaim_event_id(self, batch: LedgerBatch, row: int) -> None:
        """Row ``row``'s event is not stored after all: a later copy of it in the batch becomes
        the first, or else its id is free again in the partition's index."""
        c = batch.columns
        if c["duplicate"][row]:
            self.counters.duplicates -= 1
            return
        partition = (c["kafka_topic"][row], c["kafka_partition"][row])
        for later in range(row + 1, len(c["event_id"])):
            same = (c["kafka_topic"][later], c["kafka_partition"][later]) == partition
            if same and c["event_id"][later] == c["event_id"][row] and c["duplicate"][later]:
                c["duplicate"][later] = False
                self.counters.duplicates -= 1
                return
        self._event_ids[partition].discard(event_id_digest(str(c["event_id"][row])))


def default_writer_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


def build_app(settings: StreamSettings, writer_id: str | None = None) -> faust.App:
    """The faust app of one ingest worker; run it with ``faust.Worker(app).execute_...``."""
    store = EventStore(settings.store_dir)
    store.init()
    if removed := store.remove_orphaned_temporaries():
        log.info("removed %d temporary files that crashed writers left behind", removed)
    for topic in (settings.events_topic, settings.catalogue_topic):
        store.bind_source(topic, topic_id(settings.kafka_bootstrap, topic))
    write_catalog(store)
    ingestor = Ingestor(
        store,
        settings,
        writer_id or default_writer_id(),
        owns=lambda topic, partition: TopicPartition(topic, partition) in consumer.owned,
    )
    datadir = store.root / ".faust" / ingestor.writer_id
    datadir.mkdir(parents=True, exist_ok=True)
    app = faust.App(
        settings.consumer_group,
        broker=f"kafka://{settings.kafka_bootstrap}",
        web_enabled=False,
        topic_disable_leader=True,
        producer_acks=-1,
        producer_max_request_size=settings.dead_letter_max_bytes,
        datadir=str(datadir),
    )
    app.producer_only = True  # faust's own consumer stays off: ``BatchConsumer`` reads the topics

    async def send_dead_letter(letter: DeadLetter) -> None:
        delivered = await app.producer.send(
            settings.dead_letter_topic, key=letter.key, value=letter.value, partition=None,
            timestamp=None, headers=letter.headers,
        )  # fmt: skip
        await delivered

    async def persist(records: list[tuple[SourceRecord, bytes | None]]) -> None:
        """Dead-letter the rejects, then write the batch; a failed write exits uncommitted."""
        try:
            # Off the event loop, which meanwhile fetches the next batch and heartbeats.
            batch, rejects = await asyncio.to_thread(ingestor.build_batch, records)
            ingestor.counters.dead_letters_failed += await dead_letter_all(
                batch, rejects, send_dead_letter,
                max_bytes=settings.dead_letter_max_bytes, timeout_s=settings.dead_letter_timeout_s,
            )  # fmt: skip
            await asyncio.to_thread(ingestor.commit_batch, batch, records)
        except Exception:
            # The consumer commits a batch once ``persist`` returns, so the only way
            # not to commit what is not durable is to leave at once: the batch is replayed.
            log.critical("batch not persisted; exiting uncommitted", exc_info=True)
            os._exit(EXIT_UNPERSISTED)

    consumer = BatchConsumer(
        settings,
        (settings.events_topic, settings.catalogue_topic),
        persist=persist,
        on_revoked=ingestor.forget_partitions,
    )
    app.service(consumer)  # type: ignore[arg-type]  # an instance is started as it is

    @app.timer(interval=10.0)
    async def _report() -> None:
        c = ingestor.counters
        log.info(
            "ingest: %d accepted (%d duplicate event ids), %d rejected (%d not dead-lettered), "
            "%d replays dropped, %d batches",
            c.accepted,
            c.duplicates,
            c.rejected,
            c.dead_letters_failed,
            c.replays_dropped,
            c.batches,
        )

    return app
