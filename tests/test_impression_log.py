"""The impression log: spooled to disk, delivered to Kafka exactly once across a broker restart,
bounded, and resent after a restart of serving itself."""

from __future__ import annotations

import json
import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from kafka import KafkaConsumer

from deploy.local_kafka import LocalKafka
from schemas import Impression, PageSlot
from serving.impression_log import ImpressionLog, impression_event_id, read_segment
from streams.ingest.topics import create_topic
from tests.conftest import wait_for


def impression(n: int) -> Impression:
    request_id = f"r{n}-{uuid.uuid4().hex[:6]}"
    return Impression(
        type="impression",
        event_id=impression_event_id(request_id),
        user_id=f"u{n % 7}",
        session_id="s",
        ts=datetime.now(UTC),
        request_id=request_id,
        items=[PageSlot(item_id="i1", position=1), PageSlot(item_id="i2", position=2)],
        model_version="v1",
    )


def request_ids(bootstrap: str, topic: str, expected: int) -> Counter[str]:
    """Request ids of the impressions on ``topic``, once at least ``expected`` are there."""
    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        auto_offset_reset="earliest",
        group_id=None,
        consumer_timeout_ms=1000,
    )
    seen: Counter[str] = Counter()

    def read() -> bool:
        for record in consumer:
            seen[json.loads(record.value)["request_id"]] += 1
        return sum(seen.values()) >= expected

    try:
        wait_for(read, 60, f"{expected} impressions on {topic}", interval_s=0)
        read()  # and anything beyond: a duplicate would show here
    finally:
        consumer.close()
    return seen


@pytest.fixture
def own_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalKafka]:
    """A broker of this test's own, which it may stop and start again."""
    broker = LocalKafka(tmp_path_factory.mktemp("own-kafka"))
    broker.start()
    yield broker
    broker.stop()


@pytest.mark.kafka
def test_every_impression_arrives_once_across_a_broker_restart(
    own_broker: LocalKafka, tmp_path: Path
) -> None:
    state = own_broker.state()
    assert state is not None
    create_topic(state.bootstrap, "impressions", 4)
    log = ImpressionLog(tmp_path / "spool", state.bootstrap, "impressions")
    sent = [impression(n) for n in range(300)]
    try:
        for event in sent[:100]:
            assert log.record(event)
        wait_for(lambda: log.health().delivered == 100, 30, "the first 100 delivered")
        own_broker.stop()
        for event in sent[100:200]:  # while the broker is down
            assert log.record(event)
        spooled = lambda: sum(len(read_segment(p)) for p in (tmp_path / "spool").rglob("*.jsonl"))  # noqa: E731
        wait_for(lambda: spooled() == 100, 10, "100 impressions spooled to disk")
        assert log.health().pending == 100
        own_broker.resume(state)
        for event in sent[200:]:
            assert log.record(event)
        wait_for(lambda: log.health().pending == 0, 60, "the spool delivered")
    finally:
        left = log.close()
    assert left == 0
    assert list((tmp_path / "spool").rglob("*.jsonl")) == []
    seen = request_ids(state.bootstrap, "impressions", len(sent))
    assert set(seen) == {e.request_id for e in sent}
    assert max(seen.values()) == 1, [r for r, n in seen.items() if n > 1][:5]


def test_a_full_spool_drops_new_impressions_and_counts_them(tmp_path: Path) -> None:
    log = ImpressionLog(tmp_path / "spool", "127.0.0.1:1", "impressions", bound=5)
    try:
        accepted = [log.record(impression(n)) for n in range(8)]
        health = log.health()
    finally:
        left = log.close(timeout_s=0)
    assert accepted == [True] * 5 + [False] * 3
    assert (health.pending, health.dropped, health.kafka_connected) == (5, 3, False)
    assert left == 5


@pytest.mark.kafka
def test_impressions_spooled_before_a_restart_are_sent_after_it(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    topic = f"impressions-{uuid.uuid4().hex[:8]}"
    create_topic(kafka_bootstrap, topic, 2)
    sent = [impression(n) for n in range(20)]
    offline = ImpressionLog(tmp_path / "spool", "127.0.0.1:1", topic)
    for event in sent:
        offline.record(event)
    assert offline.close(timeout_s=0) == 20
    spooled = [s for p in sorted((tmp_path / "spool").rglob("*.jsonl")) for s in read_segment(p)]
    assert len(spooled) == 20

    online = ImpressionLog(tmp_path / "spool", kafka_bootstrap, topic)
    try:
        assert online.health().pending == 20
        wait_for(lambda: online.health().pending == 0, 30, "the old spool delivered")
    finally:
        online.close()
    seen = request_ids(kafka_bootstrap, topic, 20)
    assert set(seen) == {e.request_id for e in sent} and max(seen.values()) == 1


@pytest.mark.kafka
def test_two_logs_on_one_spool_directory_keep_apart_and_lose_nothing(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    """Replicas of one deployment share the spool setting: each must take a slot of its own."""
    topic = f"impressions-{uuid.uuid4().hex[:8]}"
    create_topic(kafka_bootstrap, topic, 2)
    logs = [ImpressionLog(tmp_path / "spool", kafka_bootstrap, topic) for _ in range(2)]
    assert logs[0].spool_dir != logs[1].spool_dir
    sent = [impression(n) for n in range(200)]
    try:
        for n, event in enumerate(sent):
            logs[n % 2].record(event)
        for log in logs:
            wait_for(lambda log=log: log.health().pending == 0, 30, "both spools delivered")
    finally:
        for log in logs:
            log.close()
    seen = request_ids(kafka_bootstrap, topic, len(sent))
    assert set(seen) == {e.request_id for e in sent} and max(seen.values()) == 1
    again = ImpressionLog(tmp_path / "spool", "127.0.0.1:1", topic)  # the slots are free again
    assert again.spool_dir == logs[0].spool_dir
    again.close(timeout_s=0)
