"""Produce -> faust worker -> event store, on the real broker and real DuckDB."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable

import pytest
from kafka import KafkaProducer

from schemas import event_to_json, parse_event
from streams.ingest.dead_letter import read_dead_letter_headers
from streams.ingest.producer import EventProducer
from streams.ingest.synthetic_feed import CORRUPTIONS, FeedGenerator
from streams.settings import StreamSettings
from streams.store.store_views import connect_store
from tests.conftest import read_topic, wait_for
from tests.test_schemas import VALID

pytestmark = pytest.mark.kafka


def stored_count(settings: StreamSettings, view: str = "ingested") -> int:
    return connect_store(settings.store_dir).execute(f"SELECT count(*) FROM {view}").fetchone()[0]


def test_every_event_type_round_trips(settings: StreamSettings, workers: Callable) -> None:
    sent = {
        kind: parse_event(json.dumps({**doc, "event_id": f"e-{kind}"}))
        for kind, doc in VALID.items()
    }
    with EventProducer(settings.kafka_bootstrap, settings.events_topic) as producer:
        producer.send_all(sent.values())
    assert producer.report.sent == 4
    workers()
    wait_for(lambda: stored_count(settings) == 4, 60, "4 events in the store")

    con = connect_store(settings.store_dir)
    impression = con.execute(
        "SELECT event_id, user_id, session_id, request_id, model_version, experiment, variant, "
        "page, ts FROM impressions"
    ).fetchone()
    expected = sent["impression"]
    assert impression == (
        "e-impression",
        expected.user_id,
        expected.session_id,
        expected.request_id,
        expected.model_version,
        expected.experiment,
        expected.variant,
        [{"item_id": s.item_id, "position": s.position} for s in expected.items],
        expected.ts,
    )
    assert con.execute("SELECT event_id, item_id, position FROM clicks").fetchone() == (
        "e-click",
        "i2",
        2,
    )
    purchase = con.execute("SELECT quantity, unit_price, gmv, currency FROM purchases").fetchone()
    assert [str(v) for v in purchase] == ["3", "19.9900", "59.9700", "EUR"]
    assert con.execute("SELECT event_id, rating FROM ratings").fetchone() == ("e-rating", 4)
    assert con.execute("SELECT count(*) FROM rejected_events").fetchone() == (0,)


def test_malformed_events_are_dead_lettered_with_reason(
    settings: StreamSettings, workers: Callable
) -> None:
    generator = FeedGenerator()
    good = list(generator.events(300))
    bad = {kind: generator.corrupt(good[i], kind) for i, kind in enumerate(sorted(CORRUPTIONS))}
    with EventProducer(settings.kafka_bootstrap, settings.events_topic) as producer:
        for i, event in enumerate(good):
            producer.send(event)
            if i < len(bad):
                kind = sorted(bad)[i]
                producer.send_raw(event.user_id.encode(), bad[kind])
    workers()
    total = len(good) + len(bad)
    wait_for(lambda: stored_count(settings) == total, 60, f"{total} records in the store")

    con = connect_store(settings.store_dir)
    assert stored_count(settings, "events") == len(good)
    assert stored_count(settings, "rejected_events") == len(bad)
    stored_ids = {r[0] for r in con.execute("SELECT event_id FROM events").fetchall()}
    assert stored_ids == {e.event_id for e in good}
    rejected = dict(con.execute("SELECT raw, reason FROM rejected_events").fetchall())
    assert set(rejected) == set(bad.values())
    first_field = {
        "not_json": "event",
        "unknown_field": "surprise",
        "wrong_type": "user_id",
        "negative_price": "unit_price",
        "negative_quantity": "quantity",
        "rating_out_of_range": "rating",
        "future_timestamp": "ts",
        "missing_field": "session_id",
        "repeated_key": "event",
    }
    for kind, raw in bad.items():
        assert rejected[raw].startswith(f"{first_field[kind]}: "), (kind, rejected[raw])

    dead = read_topic(settings, settings.dead_letter_topic, len(bad))
    assert len(dead) == len(bad)
    for record in dead:
        headers = read_dead_letter_headers(record.headers)
        assert rejected[record.value] == headers["pagellm-reject-reason"]
        topic, partition, offset = headers["pagellm-source"].rsplit("/", 2)
        assert topic == settings.events_topic and int(offset) >= 0 and int(partition) < 4


def test_records_at_the_brokers_limits_never_stop_ingestion(
    settings: StreamSettings, workers: Callable
) -> None:
    # A raw producer, as a third-party client would: a value just under the broker's 1 MB
    # limit, a null value, a keyless and a mis-keyed valid event, a good one, a purchase whose
    # GMV the store cannot hold, and a good one stamped before year 1 (the broker takes any
    # timestamp). The last two each stopped the worker at every restart.
    valid = {k: parse_event(json.dumps({**VALID["rating"], "event_id": k, "user_id": k}))
             for k in ("u3", "u4", "u5", "u7")}  # fmt: skip
    too_large = {**VALID["purchase"], "event_id": "u6", "user_id": "u6", "quantity": 10,
                 "unit_price": "10000000000000"}  # fmt: skip
    junk = bytes(range(256)) * 4062  # 1,039,872 bytes, not JSON
    producer = KafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all",
                             max_request_size=2_000_000)  # fmt: skip
    sent = [
        producer.send(settings.events_topic, key=b"u1", value=junk),
        producer.send(settings.events_topic, key=b"u2", value=None),
        producer.send(settings.events_topic, key=None, value=event_to_json(valid["u3"])),
        producer.send(settings.events_topic, key=b"u3", value=event_to_json(valid["u4"])),
        producer.send(settings.events_topic, key=b"u5", value=event_to_json(valid["u5"])),
        producer.send(settings.events_topic, key=b"u6", value=json.dumps(too_large).encode()),
        producer.send(
            settings.events_topic,
            key=b"u7",
            value=event_to_json(valid["u7"]),
            timestamp_ms=-62_135_596_800_001,
        ),
        # On the catalogue topic a null value is Kafka's delete: "gone" leaves the catalogue.
        producer.send(
            settings.catalogue_topic, key=b"gone", value=b'{"item_id": "gone", "category": "c"}'
        ),
        producer.send(
            settings.catalogue_topic, key=b"kept", value=b'{"item_id": "kept", "category": "c"}'
        ),
        producer.send(settings.catalogue_topic, key=b"gone", value=None),
    ]
    producer.flush()
    producer.close()
    assert all(future.succeeded() for future in sent), [f.exception for f in sent]
    worker = workers()
    wait_for(lambda: stored_count(settings) == 10, 90, "all 10 records in the store")
    assert worker.poll() is None, "the worker stopped"

    con = connect_store(settings.store_dir)
    assert con.execute(
        "SELECT event_id, kafka_timestamp IS NULL FROM events ORDER BY 1"
    ).fetchall() == [("u5", False), ("u7", True)]
    assert con.execute("SELECT item_id FROM catalogue").fetchall() == [("kept",)]
    rejected = {
        key: (reason, raw, dead_letter)
        for key, reason, raw, dead_letter in con.execute(
            "SELECT kafka_key, reason, raw, dead_letter FROM rejected_events"
        ).fetchall()
    }
    assert rejected[b"u1"][0].startswith("event: Invalid JSON")
    assert rejected[b"u1"][1] == junk  # the bytes, whole, in the store
    assert rejected[b"u1"][2].startswith("sent as a reference: ")
    assert rejected[b"u2"][1:] == (None, "sent")
    assert rejected[b"u2"][0].startswith("value: null")
    assert rejected[None][0].startswith("key: missing; key each record by its user_id ('u3')")
    assert rejected[b"u3"][0] == "key: 'u3' is not the record's user_id 'u4'"
    assert rejected[b"u6"][0].startswith("unit_price: quantity x unit_price = 100000000000000 ")

    dead = {r.key: r for r in read_topic(settings, settings.dead_letter_topic, 5)}
    assert set(dead) == {b"u1", b"u2", None, b"u3", b"u6"}
    big = read_dead_letter_headers(dead[b"u1"].headers)
    assert dead[b"u1"].value is None
    assert big["pagellm-raw-bytes"] == str(len(junk))
    assert big["pagellm-raw-sha256"] == hashlib.sha256(junk).hexdigest()
    assert dead[b"u2"].value is None  # null stays null, not b""
    assert dead[None].value == event_to_json(valid["u3"])
