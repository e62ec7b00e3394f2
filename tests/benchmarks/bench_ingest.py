"""``make bench-ingest``: the ingest path against a plain kafka-python consumer, in one run.

1. Produce N events (the generated mixed feed) to a fresh 4-partition topic, 1% of them sent a
   second time as new records some way after the first (a client's resends): N * 1.01 records.
2. Reference: a plain kafka-python consumer reads all records and ``json.loads`` each
   (raw_consume_eps).
3. Platform: one ingest worker from a cold start until all records are durable in the store and
   every offset is committed (ingest_eps; its startup is included and also reported alone).
   Then ``events`` must hold each of the N events exactly once (``lost`` = N - distinct ids,
   ``duplicates_shown`` = rows beyond N); what hiding the copies costs is measured twice: in
   the worker (digests and index by batches, ``dedup_us_per_record``, timed here on the same ids)
   and in queries (a full scan of ``events`` against the same scan without the duplicate
   filter).
4. Freshness: with the backlog drained, events are produced live at half the measured ingest
   rate; a DuckDB prober in this process notes when each batch file first appears in the glob
   the views read; freshness = that moment - the record's Kafka timestamp (its produce time),
   also in its two parts, split at the row's ``ingested_at`` (stamped just before its batch is
   written): produce -> ingested_at, and ingested_at -> visible.

The last line printed is the JSON summary.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import statistics
import tempfile
import threading
import time
from pathlib import Path

import duckdb
from kafka import KafkaAdminClient, KafkaConsumer
from rich.console import Console

from deploy.local_kafka import LocalKafka
from schemas import event_to_json
from streams.ingest.event_id_index import EventIdIndex
from streams.ingest.producer import EventProducer
from streams.ingest.synthetic_feed import FeedConfig, FeedGenerator
from streams.ingest.topics import create_topic
from streams.ingest.worker_process import spawn_worker, stop_worker
from streams.progress_bars import progress_bar
from streams.settings import StreamSettings
from streams.store.event_ids import event_id_digest
from streams.store.event_store import EventStore
from streams.store.store_views import connect_store

console = Console(stderr=True, soft_wrap=True)
log = logging.getLogger("bench_ingest")


def produce(settings: StreamSettings, records: list[tuple[bytes, bytes]], label: str) -> None:
    with (
        progress_bar(console) as bar,
        EventProducer(settings.kafka_bootstrap, settings.events_topic) as p,
    ):
        task = bar.add_task(label, total=len(records))
        for i, (key, value) in enumerate(records, start=1):
            p.send_raw(key, value)
            if i % 10_000 == 0:
                bar.update(task, completed=i)
        bar.update(task, completed=len(records))
    if p.report.failed:
        raise RuntimeError(f"{p.report.failed} events not acknowledged")


def raw_consume(settings: StreamSettings, n: int) -> float:
    """Events/s of a plain consumer that only reads and deserializes."""
    consumer = KafkaConsumer(
        settings.events_topic,
        bootstrap_servers=settings.kafka_bootstrap,
        group_id=None,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        max_poll_records=5000,
        fetch_max_bytes=52_428_800,
        max_partition_fetch_bytes=10_485_760,
    )
    seen = 0
    start = time.perf_counter()
    with progress_bar(console) as bar:
        task = bar.add_task("raw kafka-python consumer", total=n)
        while seen < n:
            for records in consumer.poll(timeout_ms=1000).values():
                for record in records:
                    json.loads(record.value)
                seen += len(records)
            bar.update(task, completed=seen)
    elapsed = time.perf_counter() - start
    consumer.close()
    return n / elapsed


def committed(settings: StreamSettings) -> int:
    admin = KafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    try:
        offsets = admin.list_group_offsets(settings.consumer_group)[settings.consumer_group]
    except Exception:  # coordinator still loading: nothing committed yet
        return 0
    finally:
        admin.close()
    return sum(m.offset for tp, m in offsets.items() if tp.topic == settings.events_topic)


def stored(settings: StreamSettings) -> int:
    return connect_store(settings.store_dir).execute("SELECT count(*) FROM ingested").fetchone()[0]


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class FreshnessProber(threading.Thread):
    """Polls DuckDB's view of the store's files; records produce->visible delay per event."""

    def __init__(self, store: EventStore, since_ms: int, interval_s: float = 0.05) -> None:
        super().__init__(daemon=True)
        self.store, self.since_ms, self.interval_s = store, since_ms, interval_s
        self.delays: list[float] = []
        # Each delay's two parts: produce -> ingested_at (stamped just before the batch is
        # written: the client, the broker, the fetch, the batch wait, validation), and
        # ingested_at -> visible (the write, and this prober's own polling).
        self.to_ingested: list[float] = []
        self.ingested_to_visible: list[float] = []
        self.seen: set[str] = set()
        self.stop_flag = threading.Event()

    def run(self) -> None:
        con = duckdb.connect()
        while not self.stop_flag.is_set():
            files = [
                r[0]
                for r in con.execute(
                    f"SELECT file FROM glob('{self.store.ledger_glob}')"
                ).fetchall()
            ]
            visible_ms = time.time() * 1000
            new = [f for f in files if f not in self.seen]
            if new:
                self.seen.update(new)
                stamps = con.execute(
                    "SELECT epoch_ms(kafka_timestamp), epoch_ms(ingested_at) "
                    "FROM read_parquet(?) WHERE epoch_ms(kafka_timestamp) >= ?",
                    [new, self.since_ms],
                ).fetchall()
                self.delays.extend((visible_ms - sent) / 1000 for sent, _ in stamps)
                self.to_ingested.extend((stamped - sent) / 1000 for sent, stamped in stamps)
                self.ingested_to_visible.extend(
                    (visible_ms - stamped) / 1000 for _, stamped in stamps
                )
            self.stop_flag.wait(self.interval_s)


def measure_freshness(
    settings: StreamSettings, records: list[tuple[bytes, bytes]], rate_eps: float
) -> FreshnessProber:
    """The prober after every live record became visible: its delays, and their parts."""
    store = EventStore(settings.store_dir)
    start_ms = int(time.time() * 1000)
    prober = FreshnessProber(store, since_ms=start_ms)
    prober.seen.update(
        r[0]
        for r in duckdb.connect()
        .execute(f"SELECT file FROM glob('{store.ledger_glob}')")
        .fetchall()
    )
    prober.start()
    before = stored(settings)
    with (
        progress_bar(console) as bar,
        EventProducer(settings.kafka_bootstrap, settings.events_topic, linger_ms=0) as producer,
    ):
        task = bar.add_task(f"live feed at {rate_eps:.0f} events/s", total=len(records))
        t0 = time.perf_counter()
        for i, (key, value) in enumerate(records, start=1):
            producer.send_raw(key, value)
            # Pace to the target rate: a load shape, not a synchronisation.
            ahead = i / rate_eps - (time.perf_counter() - t0)
            if ahead > 0.005:
                producer.flush()
                time.sleep(ahead)
            if i % 1000 == 0:
                bar.update(task, completed=i)
    deadline = time.monotonic() + 120
    while len(prober.delays) < len(records) and time.monotonic() < deadline:
        time.sleep(0.1)
    prober.stop_flag.set()
    prober.join()
    if stored(settings) - before < len(records):
        raise RuntimeError("the live events did not all arrive in the store")
    return prober


def with_resends(
    records: list[tuple[bytes, bytes]], share: float, seed: int
) -> list[tuple[bytes, bytes]]:
    """``records`` with a ``share`` of them sent again, each at a random later position."""
    rng = random.Random(seed)
    n = len(records)
    later: dict[int, list[tuple[bytes, bytes]]] = {}
    for i in rng.sample(range(n), int(n * share)):
        later.setdefault(rng.randint(i + 1, n), []).append(records[i])
    out: list[tuple[bytes, bytes]] = []
    for position in range(n + 1):
        out.extend(later.get(position, ()))
        if position < n:
            out.append(records[position])
    return out


def dedup_cost_us(records: list[tuple[bytes, bytes]]) -> float:
    """Per-record cost of the worker's duplicate check: digest the ids, add them to the index,
    by batches of the worker's largest size."""
    ids = [json.loads(value)["event_id"] for _, value in records]
    index = EventIdIndex()
    size = StreamSettings().batch_max_events
    start = time.perf_counter()
    for at in range(0, len(ids), size):
        index.add_all([event_id_digest(event_id) for event_id in ids[at : at + size]])
    return (time.perf_counter() - start) / len(ids) * 1e6


def scan_seconds(con: duckdb.DuckDBPyConnection, sql: str, repeats: int = 3) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        con.execute(sql).fetchall()
        best = min(best, time.perf_counter() - start)
    return best


def quantile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=1000, method="inclusive")[int(q * 1000) - 1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--live-seconds", type=float, default=20.0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    with tempfile.TemporaryDirectory(prefix="bench-ingest-") as tmp:
        root = Path(tmp)
        broker = LocalKafka(root / "kafka")
        console.print("starting the local broker ...")
        bootstrap = broker.start().bootstrap
        try:
            settings = StreamSettings(
                kafka_bootstrap=bootstrap,
                events_topic="bench.events",
                dead_letter_topic="bench.events.dlq",
                catalogue_topic="bench.catalogue",
                store_dir=root / "store",
                consumer_group="bench-ingest",
            )
            create_topic(bootstrap, settings.events_topic, 4)
            create_topic(bootstrap, settings.dead_letter_topic, 4)
            create_topic(bootstrap, settings.catalogue_topic, 4, compacted=True)
            EventStore(settings.store_dir).init()

            generator = FeedGenerator(FeedConfig(users=100_000, items=20_000, seed=11))
            console.print(f"generating {args.events:,} events ...")
            records = [
                (e.user_id.encode(), event_to_json(e)) for e in generator.events(args.events)
            ]
            records = with_resends(records, share=0.01, seed=12)
            total = len(records)
            produce(settings, records, "producing the backlog (1% resent)")
            dedup_us = dedup_cost_us(records)
            del records

            raw_eps = raw_consume(settings, total)

            start = time.perf_counter()
            worker = spawn_worker(settings, "bench", root / "worker.log")
            first_batch_s = None
            with progress_bar(console) as bar:
                task = bar.add_task("platform ingest (durable + committed)", total=total)
                while True:
                    n = stored(settings)
                    if n and first_batch_s is None:
                        first_batch_s = time.perf_counter() - start
                    bar.update(task, completed=n)
                    if n >= total and committed(settings) >= total:
                        break
                    if worker.poll() is not None:
                        raise RuntimeError(f"worker exited; see {root / 'worker.log'}")
                    time.sleep(0.1)
            ingest_s = time.perf_counter() - start
            ingest_eps = total / ingest_s
            con = connect_store(settings.store_dir)
            shown, distinct = con.execute(
                "SELECT count(*), count(DISTINCT event_id) FROM events"
            ).fetchall()[0]
            events_scan_s = scan_seconds(con, "SELECT count(*), sum(gmv) FROM events")
            unfiltered_scan_s = scan_seconds(
                con,
                "SELECT count(*), sum(gmv) FROM ingested "
                "WHERE reject_reason IS NULL AND type != 'catalogue'",
            )

            rate = ingest_eps / 2
            live = [
                (e.user_id.encode(), event_to_json(e))
                for e in generator.events(int(rate * args.live_seconds))
            ]
            prober = measure_freshness(settings, live, rate)
            delays = prober.delays
            rss = peak_rss_mb(worker.pid)
            stop_worker(worker)
        finally:
            broker.stop()

    print(
        json.dumps(
            {
                "events": args.events,
                "records": total,
                "lost": args.events - distinct,
                "duplicates_shown": shown - distinct,
                "dedup_us_per_record": round(dedup_us, 2),
                "events_scan_s": round(events_scan_s, 3),
                "unfiltered_scan_s": round(unfiltered_scan_s, 3),
                "raw_consume_eps": round(raw_eps),
                "ingest_eps": round(ingest_eps),
                "ratio": round(ingest_eps / raw_eps, 3),
                "freshness_p50_s": round(quantile(delays, 0.5), 3),
                "freshness_p99_s": round(quantile(delays, 0.99), 3),
                "produce_to_ingested_p50_p99_s": [
                    round(quantile(prober.to_ingested, q), 3) for q in (0.5, 0.99)
                ],
                "ingested_to_visible_p50_p99_s": [
                    round(quantile(prober.ingested_to_visible, q), 3) for q in (0.5, 0.99)
                ],
                "peak_rss_mb": round(rss, 1),
                "worker_first_batch_s": round(first_batch_s or float("nan"), 2),
                "live_rate_eps": round(rate),
            }
        )
    )


if __name__ == "__main__":
    main()
