"""Every served page as an ``impression`` event on Kafka, off the request path, with a disk
spool so that a broker outage loses nothing and doubles nothing.

The request path only queues the event in memory. One background thread writes what is queued
to a new spool segment (a JSON-lines file, fsynced), then hands the segment's records to an
idempotent Kafka producer that never gives up on a record (``delivery_timeout_ms`` of a week):
while the broker is away, the producer keeps retrying the same sequence numbers, so when it
returns the broker keeps each record once. A segment is deleted once Kafka acknowledged all its
records. Records whose send was refused (the producer's buffer full, the producer not yet
created because the broker was unreachable at start) stay in the spool and are sent later.

Guarantees: exactly once per request id across broker outages while serving runs; after a
crash of serving itself, the spool's segments are sent again on start, so an impression
acknowledged just before the crash may arrive twice (its ``event_id`` is ``imp-<request_id>``,
so a consumer can tell). The spool holds at most ``bound`` impressions; beyond that, new
impressions are dropped and counted (``dropped`` in ``/v1/health``) rather than filling the disk.
"""

from __future__ import annotations

import fcntl
import itertools
import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from kafka import KafkaProducer
from kafka.errors import KafkaError

from schemas import Impression, event_to_json
from schemas.page_api import SpoolHealth
from streams.store.atomic_files import write_atomically

log = logging.getLogger(__name__)

SEGMENT_SUFFIX = ".jsonl"
WEEK_MS = 7 * 24 * 3600 * 1000


def claim_spool_slot(root: Path) -> tuple[Path, IO[str]]:
    """The first ``root/slot-<n>`` no live process holds, and the open lock that holds it.

    Each replica (each process) spools into a slot of its own, so two never write or delete
    each other's segments; a replica started after one died claims the free slot and sends the
    segments the dead one left. The lock goes with the process, even on kill -9.
    """
    for n in itertools.count():
        slot = root / f"slot-{n}"
        slot.mkdir(parents=True, exist_ok=True)
        handle = open(slot / ".lock", "a")  # noqa: SIM115 - held for the log's lifetime
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            continue
        return slot, handle
    raise AssertionError("unreachable")


def impression_event_id(request_id: str) -> str:
    return f"imp-{request_id}"


@dataclass(eq=False)  # compared by identity: two segments may hold equal records
class Segment:
    path: Path
    records: list[tuple[bytes, bytes]]  # (key, value)
    sent: int = 0  # records handed to the producer, in order
    acked: set[int] = field(default_factory=set)
    failed: set[int] = field(default_factory=set)


def write_segment(path: Path, records: list[tuple[bytes, bytes]]) -> None:
    """One record per line, ``key<TAB>value``, replaced atomically and durably."""
    write_atomically(path, b"".join(key + b"\t" + value + b"\n" for key, value in records))


def read_segment(path: Path) -> list[tuple[bytes, bytes]]:
    records = []
    for line in path.read_bytes().splitlines():
        key, _, value = line.partition(b"\t")
        records.append((key, value))
    return records


class ImpressionLog:
    def __init__(
        self,
        spool_dir: Path,
        bootstrap: str,
        topic: str,
        bound: int = 1_000_000,
        poll_s: float = 0.05,
    ) -> None:
        self.spool_dir, self._slot_lock = claim_spool_slot(Path(spool_dir))
        self.bootstrap, self.topic, self.bound, self.poll_s = bootstrap, topic, bound, poll_s
        self._queue: queue.SimpleQueue[Impression] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._segments: list[Segment] = []
        for path in sorted(self.spool_dir.glob(f"*{SEGMENT_SUFFIX}")):
            self._segments.append(Segment(path, read_segment(path)))
        self._next = 1 + max((int(s.path.stem) for s in self._segments), default=0)
        self._pending = sum(len(s.records) for s in self._segments)
        if self._pending:
            log.info("%d spooled impressions from before the start will be sent", self._pending)
        self.dropped = 0
        self.delivered = 0
        self._producer: KafkaProducer | None = None
        self._next_connect = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="impression-log", daemon=True)
        self._thread.start()

    # --- the request path ------------------------------------------------------------------

    def record(self, impression: Impression) -> bool:
        """Queue one impression; False when the spool is full and it was dropped."""
        with self._lock:
            if self._pending >= self.bound:
                self.dropped += 1
                if self.dropped == 1 or self.dropped % 1000 == 0:
                    log.warning("impression spool full (%d): %d dropped", self.bound, self.dropped)
                return False
            self._pending += 1
        self._queue.put(impression)
        return True

    def health(self) -> SpoolHealth:
        with self._lock:
            return SpoolHealth(
                pending=self._pending,
                bound=self.bound,
                dropped=self.dropped,
                delivered=self.delivered,
                kafka_connected=self._producer is not None and self._producer.bootstrap_connected(),
            )

    # --- the background thread -------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            self._spool_queued()
            self._send_spooled()
            self._forget_delivered()
            self._stop.wait(self.poll_s)

    def _spool_queued(self) -> None:
        batch: list[tuple[bytes, bytes]] = []
        while True:
            try:
                event = self._queue.get_nowait()
            except queue.Empty:
                break
            batch.append((event.user_id.encode(), event_to_json(event)))
        if not batch:
            return
        path = self.spool_dir / f"{self._next:012d}{SEGMENT_SUFFIX}"
        self._next += 1
        write_segment(path, batch)
        with self._lock:
            self._segments.append(Segment(path, batch))

    def _connect(self) -> KafkaProducer | None:
        if self._producer is not None or time.monotonic() < self._next_connect:
            return self._producer
        try:
            self._producer = KafkaProducer(
                bootstrap_servers=self.bootstrap,
                client_id="pagellm-serving-impressions",
                acks="all",
                enable_idempotence=True,
                retries=2**31 - 1,
                delivery_timeout_ms=WEEK_MS,
                max_block_ms=200,
                bootstrap_timeout_ms=2000,  # this thread also spools: do not hang on a dead broker
                linger_ms=5,
            )
        except KafkaError as exc:
            self._next_connect = time.monotonic() + 1.0
            log.warning(
                "Kafka unreachable at %s (%s); impressions stay spooled", self.bootstrap, exc
            )
        return self._producer

    def _send_spooled(self) -> None:
        producer = self._connect()
        if producer is None:
            return
        for segment in list(self._segments):
            while segment.sent < len(segment.records):
                n = segment.sent
                key, value = segment.records[n]
                try:
                    future = producer.send(self.topic, key=key, value=value)
                except KafkaError:  # buffer full or no metadata yet: this record was not taken
                    return
                future.add_callback(self._acked, segment, n)
                future.add_errback(self._failed, segment, n)
                segment.sent += 1

    def _acked(self, segment: Segment, n: int, _metadata: object) -> None:
        with self._lock:
            segment.acked.add(n)

    def _failed(self, segment: Segment, n: int, exc: BaseException) -> None:
        log.error(
            "impression %d of %s not delivered (%s); it will be sent again", n, segment.path, exc
        )
        with self._lock:
            segment.failed.add(n)

    def _forget_delivered(self) -> None:
        """Delete fully acknowledged segments; rewrite those with failures to their rest."""
        with self._lock:
            done = [s for s in self._segments if len(s.acked) + len(s.failed) == len(s.records)]
        for segment in done:
            if segment.failed:
                rest = [r for n, r in enumerate(segment.records) if n not in segment.acked]
                write_segment(segment.path, rest)
                replacement = Segment(segment.path, rest)
            else:
                segment.path.unlink(missing_ok=True)
                replacement = None
            with self._lock:
                index = self._segments.index(segment)
                if replacement is None:
                    del self._segments[index]
                else:
                    self._segments[index] = replacement
                self._pending -= len(segment.acked)
                self.delivered += len(segment.acked)

    def close(self, timeout_s: float = 10.0) -> int:
        """Stop after trying for up to ``timeout_s`` to deliver what is spooled; the number
        left in the spool (sent on the next start)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and (self._pending or not self._queue.empty()):
            time.sleep(0.05)
        self._stop.set()
        self._thread.join()
        self._spool_queued()
        if self._producer is not None:
            try:
                self._producer.close(timeout=1)
            except KafkaError as exc:  # unacknowledged records stay in the spool
                log.warning("Kafka producer closed with records unacknowledged: %s", exc)
            self._forget_delivered()
        self._slot_lock.close()  # only now may another process take the slot and its leftovers
        return self._pending
