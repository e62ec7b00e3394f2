"""The ingest worker's consumer: whole fetches from Kafka's batch API, one micro-batch at a time.

faust's stream path hands the worker one event at a time through its conductor and channels:
about 100 us per event before our own work starts, capping ingestion near half of what a plain
consumer reads (README, bench-ingest). The worker needs none of what that path adds (no tables,
no per-event agents), so this service reads whole fetches with aiokafka's ``getmany`` inside
faust's worker lifecycle, and keeps the guarantees the stream path gave:

* a micro-batch closes at ``batch_max_events`` records or once its oldest record is
  ``batch_max_wait_s`` old, counted from the record's Kafka timestamp (its produce time), so
  time spent in the client, the broker and the fetch comes out of the wait, not on top of it
  (at most that long after the batch's first record arrived: a clock ahead cannot stretch it;
  at least one fetch wait, so that late records, a backlog's or a clock behind's, still gather
  a batch rather than close one per fetch);
  it is gathered while the one before it is stored (batches are stored one at a time, in
  order), so a record waits at most about the batch wait plus one store;
* its offsets are committed only after ``persist`` made it durable (a crash replays it);
* a rebalance waits for the batch in flight, so a revoked partition's last batch is stored and
  committed before another worker takes the partition;
* a stopping worker finishes the batch it started, commits it, and leaves the group.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Callable, Iterable
from datetime import UTC, datetime

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaError
from aiokafka.structs import ConsumerRecord
from mode import Service

from streams.settings import StreamSettings
from streams.store.ledger_schema import SourceRecord

log = logging.getLogger(__name__)

Records = list[tuple[SourceRecord, bytes | None]]

# A batch that could not be stored must not be committed: the worker exits at once with this
# code, and a restart replays the batch.
EXIT_UNPERSISTED = 70


def record_time(timestamp_ms: int | None) -> datetime | None:
    """A record's Kafka timestamp (ms since the epoch) as a time; None for none (Kafka's -1)
    and for any the broker accepts that is before the epoch or past year 9999, so that no
    record's metadata can stop its partition."""
    if timestamp_ms is None or timestamp_ms < 0:
        return None
    try:
        return datetime.fromtimestamp(timestamp_ms / 1000, UTC)
    except (OverflowError, ValueError, OSError):
        return None


def batch_wait_left(wait_s: float, oldest: datetime | None, now: datetime, floor_s: float) -> float:
    """How long a new batch may still gather: max(floor_s, wait_s - clamp(now - oldest, 0,
    wait_s)); the whole wait when no record carries a timestamp. The floor keeps records
    already late (a backlog, a producer's clock behind) from closing a batch per fetch."""
    if oldest is None:
        return wait_s
    age = (now - oldest).total_seconds()
    return max(floor_s, wait_s - min(max(age, 0.0), wait_s))


def source_of(record: ConsumerRecord[bytes, bytes]) -> tuple[SourceRecord, bytes | None]:
    """A consumed record as the store's ``SourceRecord`` and its raw value."""
    stamp = record_time(record.timestamp)
    source = SourceRecord(record.topic, record.partition, record.offset, record.key, stamp)
    return source, record.value


def next_offsets(records: Records) -> dict[TopicPartition, int]:
    """What to commit after ``records``: per partition, one past its highest offset."""
    out: dict[TopicPartition, int] = {}
    for source, _ in records:
        tp = TopicPartition(source.topic, source.partition)
        out[tp] = max(out.get(tp, 0), source.offset + 1)
    return out


class _WaitForBatchOnRevoke(ConsumerRebalanceListener):
    def __init__(self, service: BatchConsumer) -> None:
        self.service = service

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        async with self.service.batch_lock:  # the batch in flight is stored and committed
            self.service.owned = self.service.owned - set(revoked)
            self.service.on_revoked(set(revoked))

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        self.service.owned = frozenset(assigned)  # the whole new assignment (eager protocol)
        log.info("partitions assigned: %s", sorted(assigned))


class BatchConsumer(Service):
    """Consumes ``topics`` in micro-batches, calling ``persist`` on each before committing it."""

    def __init__(
        self,
        settings: StreamSettings,
        topics: Iterable[str],
        persist: Callable[[Records], Awaitable[None]],
        on_revoked: Callable[[set[TopicPartition]], None],
        **kwargs: object,
    ) -> None:
        super().__init__(**kwargs)
        self.settings, self.topics = settings, tuple(topics)
        self.persist, self.on_revoked = persist, on_revoked
        self.batch_lock = asyncio.Lock()
        self.consumer: AIOKafkaConsumer | None = None
        self._loop_task: asyncio.Task[None] | None = None
        # What this worker may store and commit: from the rebalance callbacks, not the
        # client's ``assignment()``, which between a revocation and the next assignment can
        # still name the revoked partitions (a worker then claimed one its successor held, and
        # one of the two was fenced). Replaced whole, never mutated: other threads read it.
        self.owned: frozenset[TopicPartition] = frozenset()

    async def on_start(self) -> None:
        s = self.settings
        self.consumer = AIOKafkaConsumer(
            bootstrap_servers=s.kafka_bootstrap,
            group_id=s.consumer_group,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            session_timeout_ms=int(s.session_timeout_s * 1000),
            heartbeat_interval_ms=int(min(3.0, s.session_timeout_s / 3) * 1000),
            fetch_max_wait_ms=s.fetch_max_wait_ms,
            max_partition_fetch_bytes=s.fetch_max_bytes_per_partition,
        )
        self.consumer.subscribe(self.topics, listener=_WaitForBatchOnRevoke(self))
        await self.consumer.start()
        self._loop_task = asyncio.ensure_future(self._consume())

    async def on_stop(self) -> None:
        if self._loop_task is not None:
            self._loop_task.cancel()  # a batch in flight is shielded: it ends stored and committed
            await asyncio.gather(self._loop_task, return_exceptions=True)
        if self.consumer is not None:
            await self.consumer.stop()  # leaves the group: its partitions move at once

    async def _consume(self) -> None:
        """Gather the next batch while the previous one is stored; store them in order."""
        storing: asyncio.Task[None] | None = None
        try:
            while True:
                records = await self._next_batch()
                if not records:
                    continue
                if storing is not None:
                    await asyncio.shield(storing)
                storing = asyncio.ensure_future(self._store_and_commit(records))
        except asyncio.CancelledError:
            if storing is not None:
                await storing  # the worker stops: the batch it started ends stored and committed
            raise
        except Exception:
            # A consumer that stopped consuming must not look alive to its supervisor.
            log.critical("the ingest consumer failed; exiting uncommitted", exc_info=True)
            os._exit(EXIT_UNPERSISTED)

    async def _next_batch(self) -> Records:
        """Records until ``batch_max_events``, or until the oldest is ``batch_max_wait_s`` old."""
        assert self.consumer is not None
        s = self.settings
        records: Records = []
        deadline: float | None = None
        while len(records) < s.batch_max_events:
            wait_s = s.batch_max_wait_s if deadline is None else deadline - time.monotonic()
            if wait_s <= 0:
                break
            fetched = await self.consumer.getmany(
                timeout_ms=int(wait_s * 1000), max_records=s.batch_max_events - len(records)
            )
            for partition_records in fetched.values():
                records.extend(source_of(r) for r in partition_records)
            if records and deadline is None:
                stamps = [source.timestamp for source, _ in records if source.timestamp]
                oldest = min(stamps, default=None)
                floor_s = min(s.fetch_max_wait_ms / 1000, s.batch_max_wait_s)
                left = batch_wait_left(s.batch_max_wait_s, oldest, datetime.now(UTC), floor_s)
                deadline = time.monotonic() + left
            elif not records:
                break  # idle: let the loop start a fresh batch (and notice a stop)
        return records

    async def _store_and_commit(self, records: Records) -> None:
        assert self.consumer is not None
        async with self.batch_lock:
            await self.persist(records)
            owned = self.owned
            offsets = {tp: o for tp, o in next_offsets(records).items() if tp in owned}
            if not offsets:
                return
            try:
                await self.consumer.commit(offsets)
            except (CommitFailedError, IllegalStateError, KafkaError) as exc:
                # The batch is durable; a new owner's watermark drops the replay it causes.
                log.warning("offsets not committed (%s); the batch is stored", exc)
