"""The worker's batch logic on a real store, without the broker: validation and replay dropping."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from aiokafka.structs import ConsumerRecord
from faust.types import TP

from streams.derive.snapshot_store import read_stream
from streams.ingest.batch_consumer import batch_wait_left, source_of
from streams.ingest.ingest_worker import Ingestor
from streams.settings import StreamSettings
from streams.store.event_store import EventStore
from streams.store.ledger_schema import SourceRecord
from streams.store.partition_fences import Fenced
from streams.store.store_views import connect_store
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
    ingestor.commit_batch(batch, first)

    replay = records(range(5, 15))
    batch, _ = ingestor.build_batch(replay)
    assert batch.accepted == 5
    assert ingestor.counters.replays_dropped == 5


def test_watermarks_reload_from_the_store_after_revocation(ingestor: Ingestor) -> None:
    first = records(range(0, 10), partition=2)
    batch, _ = ingestor.build_batch(first)
    ingestor.commit_batch(batch, first)
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
    assert rejects[0].reason.startswith("event: Invalid JSON")
    assert "event_id: Field required" in rejects[1].reason


def test_catalogue_records_are_validated_as_items(ingestor: Ingestor) -> None:
    now = datetime.now(UTC)
    topic = ingestor.settings.catalogue_topic
    records = [
        (SourceRecord(topic, 0, 0, b"a", now), b'{"item_id": "a", "category": "toys"}'),
        (SourceRecord(topic, 0, 1, b"b", now), b'{"item_id": "b", "price": -1}'),
    ]
    batch, rejects = ingestor.build_batch(records)
    assert (batch.accepted, batch.rejected) == (1, 1)
    assert rejects[0].reason == (
        "category: Field required; price: Input should be greater than or equal to 0"
    )


def test_a_catalogue_tombstone_deletes_its_item_until_the_item_is_sent_again(
    ingestor: Ingestor,
) -> None:
    # A null value on the (compacted) catalogue topic is Kafka's delete: it was rejected, and
    # the item stayed in the catalogue, on every page that could offer it.
    now = datetime.now(UTC)
    topic = ingestor.settings.catalogue_topic
    item = b'{"item_id": "%s", "category": "toys"}'

    def send(*records: tuple[bytes | None, bytes | None]) -> list[str]:
        start = len(stored_offsets(ingestor.store))
        held = [(SourceRecord(topic, 0, start + n, key, now), value)
                for n, (key, value) in enumerate(records)]  # fmt: skip
        batch, rejects = ingestor.build_batch(held)
        ingestor.commit_batch(batch, held)
        return [r.reason for r in rejects]

    def listed() -> list[str]:
        con = connect_store(ingestor.store.root)
        return [r[0] for r in con.execute("SELECT item_id FROM catalogue ORDER BY 1").fetchall()]

    assert send((b"a", item % b"a"), (b"b", item % b"b"), (b"c", item % b"c")) == []
    refused = send((b"a", None), (None, None), (b"no spaces", None))
    assert refused == [
        "key: missing; a catalogue deletion is keyed by the item_id it deletes",
        "key: a catalogue deletion's key must be an item_id "
        "(String should match pattern '^[A-Za-z0-9][A-Za-z0-9_.:\\-]*$')",
    ]
    assert listed() == ["b", "c"]
    _, catalogue, deleted = read_stream(ingestor.store, tuple(ingestor.store.ledger_files()))
    assert (sorted(catalogue), deleted) == (["a", "b", "c"], {"a"})  # a's last record stays
    assert send((b"a", item % b"a")) == []
    assert listed() == ["a", "b", "c"]
    assert read_stream(ingestor.store, tuple(ingestor.store.ledger_files()))[2] == set()


def test_a_record_keyed_by_anything_but_its_id_is_refused(ingestor: Ingestor) -> None:
    # A keyless or mis-keyed event may land in another partition than its user's other events
    # and overtake them; a mis-keyed catalogue item escapes the compaction by item id.
    (_, value), *_ = records(range(1))  # a valid rating of user u0
    now = datetime.now(UTC)
    topic = ingestor.settings.catalogue_topic
    item = b'{"item_id": "a", "category": "toys"}'
    batch, rejects = ingestor.build_batch([
        (SourceRecord("events", 0, 0, None, now), value),
        (SourceRecord("events", 0, 1, b"u9", now), value),
        (SourceRecord("events", 0, 2, b"u0", now), value),
        (SourceRecord(topic, 0, 0, b"b", now), item),
        (SourceRecord(topic, 0, 1, b"a", now), item),
    ])  # fmt: skip
    assert (batch.accepted, batch.rejected) == (2, 3)
    assert [r.reason for r in rejects] == [
        "key: missing; key each record by its user_id ('u0') to keep it in order",
        "key: 'u9' is not the record's user_id 'u0'",
        "key: 'b' is not the record's item_id 'a'",
    ]


def test_a_null_value_is_refused_and_stays_null(ingestor: Ingestor) -> None:
    now = datetime.now(UTC)
    batch, rejects = ingestor.build_batch([(SourceRecord("events", 0, 0, b"u0", now), None)])
    assert rejects[0].reason.startswith("value: null") and rejects[0].raw is None
    row = batch.to_table().to_pylist()[0]
    assert (row["raw"], row["reject_reason"]) == (None, rejects[0].reason)


def stored_offsets(store: EventStore) -> list[int]:
    con = connect_store(store.root)
    return [r[0] for r in con.execute("SELECT kafka_offset FROM ingested ORDER BY 1").fetchall()]


def test_a_stalled_worker_cannot_store_what_its_successor_took_over(ingestor: Ingestor) -> None:
    # The stalled worker built its batch, then slept past its session; the successor took the
    # partition, found nothing stored and wrote the same records. The stalled batch must not
    # land beside them.
    held = records(range(0, 10))
    stalled, _ = ingestor.build_batch(held)
    successor = Ingestor(ingestor.store, ingestor.settings, writer_id="successor")
    batch, _ = successor.build_batch(held)
    successor.commit_batch(batch, held)
    with pytest.raises(Fenced, match=r"events\[0\] \(now epoch 2\)"):
        ingestor.commit_batch(stalled, held)
    assert stored_offsets(ingestor.store) == list(range(10))


def test_a_batch_stored_before_the_successor_claims_is_seen_by_it(ingestor: Ingestor) -> None:
    held = records(range(0, 10))
    batch, _ = ingestor.build_batch(held)
    ingestor.commit_batch(batch, held)  # in time: before any successor
    successor = Ingestor(ingestor.store, ingestor.settings, writer_id="successor")
    replay, _ = successor.build_batch(records(range(0, 12)))
    assert replay.accepted == 2 and successor.counters.replays_dropped == 10


def test_records_of_a_partition_kafka_took_away_are_left_to_its_owner(tmp_path: Path) -> None:
    store = EventStore(tmp_path / "store")
    store.init()
    settings = StreamSettings(store_dir=tmp_path / "store")
    revoked = Ingestor(store, settings, "w", owns=lambda _topic, partition: partition != 1)
    batch, _ = revoked.build_batch(records(range(0, 4), partition=1) + records(range(0, 3)))
    assert (batch.accepted, revoked.counters.not_owned_skipped) == (3, 4)
    assert not (store.root / "fences" / "events" / "1.json").exists()  # never claimed


def resend(
    values: list[bytes], offsets: range, partition: int = 0
) -> list[tuple[SourceRecord, bytes]]:
    """The same event values sent again as new records (new offsets)."""
    now = datetime.now(UTC)
    return [
        (SourceRecord("events", partition, o, b"u0", now), v)
        for o, v in zip(offsets, values, strict=True)
    ]


def test_an_event_resent_as_a_new_record_is_stored_once_in_events(ingestor: Ingestor) -> None:
    first = records(range(0, 5))
    values = [v for _, v in first]
    # Two resends of event 1 (one within the same batch), one of event 3 in a later batch.
    for held in (first + resend(values[1:2], range(5, 6)), resend(values[3:0:-2], range(6, 8))):
        batch, _ = ingestor.build_batch(held)
        ingestor.commit_batch(batch, held)
    assert ingestor.counters.duplicates == 3

    con = connect_store(ingestor.store.root)
    events = con.execute("SELECT event_id, kafka_offset FROM events ORDER BY 2").fetchall()
    assert events == [(f"u0-{k}", k) for k in range(5)]  # the first stored copy wins
    listed = con.execute(
        "SELECT event_id, copies, hidden, [r.offset FOR r IN records] FROM duplicate_events "
        "ORDER BY 1"
    ).fetchall()
    assert listed == [("u0-1", 3, 2, [1, 5, 7]), ("u0-3", 2, 1, [3, 6])]


def test_a_new_owner_rebuilds_the_stored_event_ids_from_the_store(ingestor: Ingestor) -> None:
    # The index a successor builds in SQL must key ids exactly as the worker does in Python.
    first = records(range(0, 50), partition=3)
    batch, _ = ingestor.build_batch(first)
    ingestor.commit_batch(batch, first)
    successor = Ingestor(ingestor.store, ingestor.settings, writer_id="successor")
    values = [v for _, v in first]
    batch, _ = successor.build_batch(
        records(range(48, 50), partition=3) + resend(values[10:20], range(50, 60), partition=3)
    )
    assert successor.counters.replays_dropped == 2  # offsets it holds: replays, not copies
    assert (batch.accepted, successor.counters.duplicates) == (10, 10)
    assert batch.columns["duplicate"] == [True] * 10


def test_training_data_counts_a_resent_rating_once(ingestor: Ingestor) -> None:
    first = records(range(0, 3))
    copy = resend([first[0][1]], range(3, 4))
    batch, _ = ingestor.build_batch(first + copy)
    ingestor.commit_batch(batch, first + copy)
    events, _, _ = read_stream(ingestor.store, tuple(ingestor.store.ledger_files()))
    assert [e.event_id for e in events] == ["u0-0", "u0-1", "u0-2"]


@pytest.mark.parametrize(
    ("timestamp_ms", "stored"),
    [
        (0, datetime(1970, 1, 1, tzinfo=UTC)),  # the epoch is a time, not "none"
        (1_700_000_000_123, datetime(2023, 11, 14, 22, 13, 20, 123000, tzinfo=UTC)),
        (-1, None),  # Kafka's "no timestamp"
        # The broker accepts both; the first stopped the worker at every restart.
        (-62_135_596_800_001, None),
        (2**62, None),
    ],
)
def test_any_kafka_timestamp_the_broker_accepts_is_stored(
    ingestor: Ingestor, timestamp_ms: int, stored: datetime | None
) -> None:
    [(_, value)] = records(range(1))
    record = ConsumerRecord("events", 0, 0, timestamp_ms, 0, b"u0", value, None, 2, len(value), ())
    source, raw = source_of(record)
    batch, rejects = ingestor.build_batch([(source, raw)])
    ingestor.commit_batch(batch, [(source, raw)])
    assert not rejects
    con = connect_store(ingestor.store.root)
    assert con.execute("SELECT kafka_timestamp FROM ingested").fetchall() == [(stored,)]


def test_an_event_the_ledger_cannot_hold_is_parked_and_its_partition_goes_on(
    ingestor: Ingestor,
) -> None:
    # Twice a value passed the schema that a ledger column could not hold (a GMV past
    # DECIMAL(18,4), a time before year 1): the batch failed its write at every restart. Both
    # were closed at the schema; any other such gap parks the event instead. Here two ratings
    # hold a value past the column's int8, as such a gap would leave them; the first of them
    # is resent in the same batch.
    held = records(range(0, 6))
    values = [v for _, v in held]
    held += resend(values[2:3], range(6, 7))
    batch, _ = ingestor.build_batch(held)
    assert batch.columns["duplicate"][6] is True
    batch.columns["rating"][2] = batch.columns["rating"][4] = 300
    ingestor.commit_batch(batch, held)

    con = connect_store(ingestor.store.root)
    parked = con.execute(
        "SELECT kafka_offset, reason, raw, dead_letter FROM rejected_events ORDER BY 1"
    ).fetchall()
    assert [(offset, raw) for offset, _, raw, _ in parked] == [(2, values[2]), (4, values[4])]
    assert all(reason.startswith("store: the ledger cannot hold this record's rating: ")
               for _, reason, _, _ in parked)  # fmt: skip
    assert all(note.startswith("not sent: ") for _, _, _, note in parked)
    # The resend of the parked event 2 is now its stored copy; event 4's id is free again.
    events = con.execute("SELECT event_id, kafka_offset FROM events ORDER BY 2").fetchall()
    assert events == [("u0-0", 0), ("u0-1", 1), ("u0-3", 3), ("u0-5", 5), ("u0-2", 6)]
    counters = ingestor.counters
    assert (counters.accepted, counters.rejected, counters.duplicates) == (5, 2, 0)
    later = resend(values[4:5], range(7, 8))
    batch, _ = ingestor.build_batch(later)
    assert batch.columns["duplicate"] == [False]


def test_a_batch_waits_what_is_left_of_its_oldest_records_wait() -> None:
    now = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)
    ago = [now - timedelta(seconds=s) for s in (0.2, 0.45, 3)]
    assert batch_wait_left(0.5, ago[0], now, 0.1) == pytest.approx(0.3)
    assert batch_wait_left(0.5, ago[1], now, 0.1) == 0.1  # late: one fetch wait still
    assert batch_wait_left(0.5, ago[2], now, 0.1) == 0.1  # a backlog, a clock behind
    assert batch_wait_left(0.5, now + timedelta(seconds=2), now, 0.1) == 0.5  # a clock ahead
    assert batch_wait_left(0.5, None, now, 0.1) == 0.5  # no timestamp
