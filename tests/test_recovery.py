"""Effectively-once ingestion: kill -9 loses nothing, replays double nothing, workers share."""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from itertools import islice
from pathlib import Path

import pytest
from kafka import KafkaAdminClient
from kafka.errors import KafkaError

from streams.ingest.producer import EventProducer
from streams.settings import StreamSettings
from streams.store.event_store import EventStore
from streams.store.file_locks import exclusive
from streams.store.store_views import connect_store
from tests.conftest import wait_for, waiting_on_a_file_lock
from tests.feed_bytes import rating_records

pytestmark = pytest.mark.kafka


def produce(settings: StreamSettings, records: Iterable[tuple[bytes, bytes]]) -> int:
    with EventProducer(settings.kafka_bootstrap, settings.events_topic) as producer:
        for key, value in records:
            producer.send_raw(key, value)
    assert producer.report.failed == 0
    return producer.report.sent


def produce_ratings(settings: StreamSettings, users: int, per_user: int) -> int:
    return produce(settings, rating_records(users, per_user))


def stored(settings: StreamSettings) -> tuple[int, int]:
    """(rows, distinct event ids) of accepted events in the store."""
    con = connect_store(settings.store_dir)
    return con.execute("SELECT count(*), count(DISTINCT event_id) FROM events").fetchone()


def committed_offsets(settings: StreamSettings) -> int:
    admin = KafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    try:
        offsets = admin.list_group_offsets(settings.consumer_group)[settings.consumer_group]
    finally:
        admin.close()
    # A partition with no commit reports offset -1.
    return sum(
        max(meta.offset, 0) for tp, meta in offsets.items() if tp.topic == settings.events_topic
    )


def test_kill_9_mid_stream_then_restart_stores_each_event_once(
    settings: StreamSettings, workers: Callable
) -> None:
    settings = settings.model_copy(update={"batch_max_events": 1000})
    records = rating_records(users=100, per_user=100)
    # Half the stream before the kill, the rest after it: the kill is mid-stream by construction
    # (however fast the worker, and whatever the volume), and the restarted worker must resume
    # where the store left off.
    produced = produce(settings, islice(records, 5_000))
    assert produced == 5_000

    first = workers("w0", use=settings)
    wait_for(lambda: stored(settings)[0] >= 2_000, 120, "two batches of events stored")
    first.send_signal(signal.SIGKILL)
    assert first.wait(10) == -signal.SIGKILL
    at_kill, distinct_at_kill = stored(settings)
    assert distinct_at_kill == at_kill, "the killed worker had stored some event twice"
    # Offsets are committed only for what is durable, so a kill can leave stored events
    # uncommitted (the restart replays them) but never committed events unstored (lost).
    assert committed_offsets(settings) <= at_kill

    produced += produce(settings, records)
    assert produced == 10_000
    workers("w0", use=settings)
    wait_for(lambda: stored(settings)[0] >= produced, 180, "every event stored after restart")
    # Once every offset is committed no replay can still arrive; then the store must be exact.
    wait_for(lambda: committed_offsets(settings) == produced, 60, "all offsets committed")
    rows, distinct = stored(settings)
    assert (rows, distinct) == (produced, produced)


def test_failed_store_write_exits_unacknowledged_and_a_restart_loses_nothing(
    settings: StreamSettings, workers: Callable
) -> None:
    # A plain file where today's partition directory belongs makes every batch write fail.
    today = datetime.now(UTC).date()
    blockers = [
        settings.store_dir / "ingested" / f"date={day:%Y-%m-%d}"
        for day in (today, today + timedelta(days=1))
    ]
    for blocker in blockers:
        blocker.write_text("not a directory")
    produced = produce_ratings(settings, users=50, per_user=20)

    failing = workers("w0")
    assert failing.wait(timeout=90) == 70
    assert committed_offsets(settings) == 0
    assert stored(settings) == (0, 0)

    for blocker in blockers:
        blocker.unlink()
    workers("w0")
    wait_for(lambda: committed_offsets(settings) == produced, 120, "all offsets committed")
    assert stored(settings) == (produced, produced)


def test_two_workers_share_four_partitions_and_store_each_event_once(
    settings: StreamSettings, workers: Callable
) -> None:
    workers("wa")
    workers("wb")

    def both_assigned() -> bool:
        admin = KafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
        try:
            group = admin.describe_groups([settings.consumer_group])[settings.consumer_group]
        except KafkaError:  # the group coordinator is still loading: not yet
            return False
        finally:
            admin.close()
        return group["group_state"] == "Stable" and len(group["members"]) == 2

    wait_for(both_assigned, 60, "both workers in the consumer group")
    produced = produce_ratings(settings, users=400, per_user=50)
    wait_for(lambda: stored(settings)[0] >= produced, 120, "every event stored")
    wait_for(lambda: committed_offsets(settings) == produced, 60, "all offsets committed")
    assert stored(settings) == (produced, produced)

    con = connect_store(settings.store_dir)
    by_writer = dict(
        con.execute(
            "SELECT regexp_extract(filename, '-(w[ab])-', 1) AS writer, count(*) "
            f"FROM read_parquet('{settings.store_dir}/ingested/*/*.parquet', filename = true) "
            "WHERE reject_reason IS NULL GROUP BY 1"
        ).fetchall()
    )
    assert set(by_writer) == {"wa", "wb"}, by_writer
    assert sum(by_writer.values()) == produced
    # Both joined before the events were produced, so the four partitions were split two and
    # two from the start: each partition's events were all stored by one worker.
    partitions = con.execute(
        "SELECT regexp_extract(filename, '-(w[ab])-', 1) AS writer, "
        "list(DISTINCT kafka_partition ORDER BY kafka_partition) "
        f"FROM read_parquet('{settings.store_dir}/ingested/*/*.parquet', filename = true) "
        "WHERE reject_reason IS NULL GROUP BY 1"
    ).fetchall()
    owned = {writer: set(parts) for writer, parts in partitions}
    assert owned["wa"].isdisjoint(owned["wb"]), owned
    assert sorted(map(len, owned.values())) == [2, 2], owned
    assert owned["wa"] | owned["wb"] == {0, 1, 2, 3}, owned


def stopped(pid: int) -> bool:
    """Whether every thread of process ``pid`` is stopped (state T in /proc/PID/task/*/stat)."""
    stats = (path.read_text() for path in Path(f"/proc/{pid}/task").glob("*/stat"))
    return all(stat.rsplit(")", 1)[1].split()[0] == "T" for stat in stats)


def test_a_worker_stalled_past_its_session_cannot_store_what_its_successor_took(
    settings: StreamSettings, workers: Callable
) -> None:
    # The stall must hit a worker holding a batch it has not made visible. Waiting for "some
    # stored" and then stopping it raced a worker that had meanwhile stored the whole backlog
    # (it then woke up with nothing to store and stayed). So the test holds the partitions'
    # fence locks: the worker's next publication waits on them with its batch, and is stopped
    # there (a stopped process leaves the lock's queue, so its successor is not held up).
    settings = settings.model_copy(update={"session_timeout_s": 6.0, "batch_max_events": 1000})
    records = rating_records(users=400, per_user=50)
    produced = produce(settings, islice(records, 5_000))
    stalled = workers("wa", use=settings)
    fence_dir = EventStore(settings.store_dir).fences.dir / settings.events_topic
    # Every partition claimed first (the first 5,000 records hold 100 users, so all four
    # partitions): the stall then hits a batch waiting to publish, never a claim, which, woken
    # after its successor's, would take a partition back with nothing of its own to store.
    wait_for(
        lambda: len(list(fence_dir.glob("*.json"))) == settings.partitions,
        120,
        "the first worker claiming every partition",
    )
    with contextlib.ExitStack() as held:
        for partition in range(settings.partitions):
            lock_path = fence_dir / f"{partition}.lock"
            held.enter_context(exclusive(lock_path))
        produced += produce(settings, records)  # every user: every partition, held ones too
        wait_for(lambda: waiting_on_a_file_lock(stalled.pid), 60, "a batch waiting to publish")
        stalled.send_signal(signal.SIGSTOP)
        # Not before every thread stopped: a waiter woken by the release would take the lock.
        wait_for(lambda: stopped(stalled.pid), 10, "the first worker stopped")
    try:
        workers("wb", use=settings)
        wait_for(lambda: stored(settings)[1] >= produced, 180, "the successor storing it all")
    finally:
        stalled.send_signal(signal.SIGCONT)
    # Awake, the stalled worker finds its partitions taken: it stores nothing and leaves.
    assert stalled.wait(timeout=60) == 70
    log = stalled.log_path.read_text()  # type: ignore[attr-defined]
    assert "were taken by another writer since this one claimed them" in log
    wait_for(lambda: committed_offsets(settings) == produced, 60, "all offsets committed")
    assert stored(settings) == (produced, produced)


def group_members(settings: StreamSettings) -> int | None:
    admin = KafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    try:
        return len(
            admin.describe_groups([settings.consumer_group])[settings.consumer_group]["members"]
        )
    except KafkaError:  # the group coordinator is still loading
        return None
    finally:
        admin.close()


def test_a_worker_joining_then_one_stopping_mid_backlog_store_each_event_once(
    settings: StreamSettings, workers: Callable
) -> None:
    # A join revokes partitions while the first worker is storing a batch; a SIGTERM stops it
    # with a batch in flight. It must store and commit that batch, then leave the group at once
    # (not after its 10 s session times out), and its partner must take over the rest.
    settings = settings.model_copy(update={"batch_max_events": 1000})
    produced = produce_ratings(settings, users=1000, per_user=100)
    first = workers("wa", use=settings)
    wait_for(lambda: stored(settings)[0] >= 10_000, 120, "the first worker storing")
    workers("wb", use=settings)
    wait_for(lambda: group_members(settings) == 2, 60, "the second worker in the group")
    wait_for(lambda: stored(settings)[0] >= 30_000, 120, "more stored after the rebalance")
    first.send_signal(signal.SIGTERM)
    assert first.wait(timeout=20) == 0
    wait_for(lambda: group_members(settings) == 1, 6, "the stopped worker gone from the group")
    wait_for(lambda: stored(settings)[0] >= produced, 180, "every event stored")
    wait_for(lambda: committed_offsets(settings) == produced, 60, "all offsets committed")
    assert stored(settings) == (produced, produced)
