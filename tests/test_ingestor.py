"""The worker's batch logic on a real store, without the broker: validation and replay dropping."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from faust.types import TP

from streams.event_store import EventStore
from streams.ingest_worker import Ingestor
from streams.ledger import SourceRecord
from streams.settings import StreamSettings
from tests.feed_bytes import rating_records


def records(offsets: range, partition: int = 0) -> list[tuple[SourceRecord, bytes]]:
    values = [v for _, v in rating_records(users=1, per_user=len(offsets))]
    now = datetime.now(UTC)
    return [
        (SourceRecord("events", partition, o, b"u0", now), v)
        for o, v in zip(offsets, values, strict=True)
    ]


@pytest.fixture
def ingestor(tmp_path: Path) -> Ingestor:
    store = EventStore(tmp_path / "store")
    store.init()
    return Ingestor(store, StreamSettings(store_dir=tmp_path / "store"), writer_id="t")


def test_replayed_offsets_are_dropped(ingestor: Ingestor) -> None:
    first = records(range(0, 10))
    batch, rejects = ingestor.build_batch(first)
    assert (batch.accepted, batch.rejected, rejects) == (10, 0, [])
    ingestor.commit_batch(batch, [s for s, _ in first])

    replay = records(range(5, 15))
    batch, _ = ingestor.build_batch(replay)
    assert batch.accepted == 5
    assert ingestor.counters.replays_dropped == 5


def test_watermarks_reload_from_the_store_after_revocation(ingestor: Ingestor) -> None:
    first = records(range(0, 10), partition=2)
    batch, _ = ingestor.build_batch(first)
    ingestor.commit_batch(batch, [s for s, _ in first])
    ingestor.forget_partitions({TP("events", 2)})

    # As a fresh owner of partition 2 would: the store, not memory, says what is durable.
    fresh = Ingestor(ingestor.store, ingestor.settings, writer_id="other")
    batch, _ = fresh.build_batch(records(range(8, 12), partition=2))
    assert batch.accepted == 2
    assert fresh.counters.replays_dropped == 2


def test_invalid_records_become_rejects_with_reasons(ingestor: Ingestor) -> None:
    now = datetime.now(UTC)
    bad = [
        (SourceRecord("events", 0, 0, None, now), b"{not json"),
        (SourceRecord("events", 0, 1, None, now), b'{"type": "rating"}'),
    ]
    batch, rejects = ingestor.build_batch(bad)
    assert (batch.accepted, batch.rejected) == (0, 2)
    assert rejects[0][2].startswith("event: Invalid JSON")
    assert "event_id: Field required" in rejects[1][2]


def test_catalogue_records_are_validated_as_items(ingestor: Ingestor) -> None:
    now = datetime.now(UTC)
    topic = ingestor.settings.catalogue_topic
    records = [
        (SourceRecord(topic, 0, 0, b"a", now), b'{"item_id": "a", "category": "toys"}'),
        (SourceRecord(topic, 0, 1, b"b", now), b'{"item_id": "b", "price": -1}'),
    ]
    batch, rejects = ingestor.build_batch(records)
    assert (batch.accepted, batch.rejected) == (1, 1)
    assert rejects[0][2] == (
        "category: Field required; price: Input should be greater than or equal to 0"
    )
