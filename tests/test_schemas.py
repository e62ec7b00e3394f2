"""The wire schemas: what is accepted, and that every rejection names its field and reason."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from schemas import CatalogueItem, InvalidEvent, event_to_json, parse_catalogue_item, parse_event
from schemas.events import MONEY_MAX
from streams.ingest.synthetic_feed import CORRUPTIONS, FeedGenerator
from streams.store.ledger_schema import LedgerBatch, SourceRecord, event_from_row

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
BASE = {
    "event_id": "e-1",
    "user_id": "u-1",
    "session_id": "s-1",
    "ts": "2026-06-01T11:59:00+00:00",
}
VALID = {
    "impression": {
        **BASE,
        "type": "impression",
        "request_id": "r-1",
        "model_version": "v1",
        "experiment": "exp",
        "variant": "treatment",
        "items": [{"item_id": "i1", "position": 1}, {"item_id": "i2", "position": 2}],
    },
    "click": {**BASE, "type": "click", "request_id": "r-1", "item_id": "i2", "position": 2},
    "purchase": {
        **BASE,
        "type": "purchase",
        "item_id": "i2",
        "quantity": 3,
        "unit_price": 19.99,
        "currency": "EUR",
        "request_id": "r-1",
    },
    "rating": {**BASE, "type": "rating", "item_id": "i2", "rating": 4},
}


def parse(doc: dict[str, object] | bytes) -> object:
    raw = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
    return parse_event(raw, now=NOW)


@pytest.mark.parametrize("kind", sorted(VALID))
def test_every_event_type_round_trips(kind: str) -> None:
    event = parse(VALID[kind])
    assert event.type == kind
    assert event.schema_version == 1
    assert parse_event(event_to_json(event), now=NOW) == event


def test_purchase_gmv_is_exact_decimal() -> None:
    purchase = parse(VALID["purchase"])
    assert purchase.gmv == Decimal("59.97")


LONGEST_ID = "i" * 128
EXTREMES = {
    "oldest": {**VALID["rating"], "ts": "1970-01-01T00:00:00+00:00", "rating": 1},
    "newest": {**VALID["rating"], "ts": (NOW + timedelta(minutes=5)).isoformat(), "rating": 5},
    "longest ids": {
        **VALID["click"], "event_id": LONGEST_ID, "user_id": LONGEST_ID,
        "session_id": LONGEST_ID, "request_id": LONGEST_ID, "item_id": LONGEST_ID,
        "position": 1000,
    },
    "largest page": {
        **VALID["impression"],
        "items": [{"item_id": f"i{k}", "position": k} for k in range(1, 1001)],
    },
    "most units": {**VALID["purchase"], "quantity": 1_000_000, "unit_price": "99999999.9999"},
    "free": {**VALID["purchase"], "unit_price": 0},
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(EXTREMES))
def test_every_extreme_the_schema_accepts_the_store_holds_and_gives_back(name: str) -> None:
    # A value the schema accepts and the ledger cannot hold stops ingestion at every restart
    # (the GMV case below was found that way): each bound of each field, written and read.
    event = parse(EXTREMES[name])
    batch = LedgerBatch()
    batch.add_accepted(event, SourceRecord("events", 0, 0, event.user_id.encode(), None))
    [row] = batch.to_table().to_pylist()
    assert event_from_row(row) == event


def test_the_largest_gmv_accepted_is_the_largest_the_store_holds() -> None:
    largest = parse({**VALID["purchase"], "quantity": 1, "unit_price": str(MONEY_MAX)})
    assert largest.gmv == MONEY_MAX
    batch = LedgerBatch()
    batch.add_accepted(largest, SourceRecord("events", 0, 0, b"u-1", None))
    assert batch.to_table().column("gmv").to_pylist() == [MONEY_MAX]
    with pytest.raises(InvalidEvent, match=r"^unit_price: .*largest GMV"):
        parse({**VALID["purchase"], "quantity": 2, "unit_price": "50000000000000"})


@pytest.mark.parametrize(
    ("change", "field", "reason"),
    [
        ({"surprise": 1}, "surprise", "Extra inputs are not permitted"),
        ({"user_id": 7}, "user_id", "valid string"),
        ({"quantity": "3"}, "quantity", "valid integer"),
        ({"unit_price": -0.01}, "unit_price", "greater than or equal to 0"),
        ({"quantity": 0}, "quantity", "greater than or equal to 1"),
        ({"currency": "euro"}, "currency", "should match pattern"),
        ({"ts": "2026-06-01T13:00:00+00:00"}, "ts", "in the future"),
        ({"ts": "2026-06-01T11:59:00"}, "ts", "timezone"),
        ({"ts": "yesterday"}, "ts", "ISO-8601"),
        ({"schema_version": 2}, "schema_version", "Input should be 1"),
        ({"schema_version": True}, "schema_version", "not a boolean"),
        ({"ts": "1969-12-31T23:59:59+00:00"}, "ts", "before 1970-01-01"),
        # Year 1 at +14:00 is year 0 in UTC: the derive worker's reader crashed on it.
        ({"ts": "0001-01-01T00:00:00+14:00"}, "ts", "before 1970-01-01"),
        # 10 x 1e13 does not fit the store's DECIMAL(18, 4): the batch holding it could not
        # be written, and the worker died on it at every restart.
        ({"quantity": 10, "unit_price": "10000000000000"}, "unit_price", "largest GMV"),
    ],
)
def test_purchase_violations_name_field_and_reason(
    change: dict[str, object], field: str, reason: str
) -> None:
    with pytest.raises(InvalidEvent) as err:
        parse({**VALID["purchase"], **change})
    assert err.value.reason.startswith(f"{field}: ")
    assert reason in err.value.reason


@pytest.mark.parametrize("rating", [0, 6, 4.5, True])
def test_rating_outside_one_to_five_is_rejected(rating: object) -> None:
    with pytest.raises(InvalidEvent, match=r"^rating: "):
        parse({**VALID["rating"], "rating": rating})


def test_clock_skew_is_a_setting() -> None:
    ahead = {**VALID["click"], "ts": (NOW + timedelta(minutes=3)).isoformat()}
    assert parse(ahead).type == "click"
    with pytest.raises(InvalidEvent, match="allowed clock skew 60 s"):
        parse_event(json.dumps(ahead), now=NOW, max_clock_skew=timedelta(minutes=1))


def test_not_json_and_unknown_type_are_rejected() -> None:
    with pytest.raises(InvalidEvent, match=r"^event: Invalid JSON"):
        parse(b"\x00not json")
    with pytest.raises(InvalidEvent, match=r"^type: .*does not match any of the expected tags"):
        parse({**VALID["click"], "type": "hover"})
    without_type = {k: v for k, v in VALID["click"].items() if k != "type"}
    with pytest.raises(InvalidEvent, match=r"^type: Unable to extract tag"):
        parse(without_type)


RATING_FIELDS = json.dumps(VALID["rating"])[1:-1].replace(', "rating": 4', "")
REPEATED_SLOT_KEY = json.dumps(VALID["impression"]).replace(
    '"position": 1}', '"position": 1, "position": 3}'
)


@pytest.mark.parametrize(
    ("body", "key"),
    [
        ("{" + RATING_FIELDS + ', "rating": 9, "rating": 4}', "rating"),  # was stored as 4
        ("{" + RATING_FIELDS + ', "rating" :4, "rating" : 4}', "rating"),  # spaced, equal
        (REPEATED_SLOT_KEY, "position"),
    ],
)
def test_a_key_given_twice_is_refused_naming_it(body: str, key: str) -> None:
    with pytest.raises(InvalidEvent, match=rf"^event: the key '{key}' appears twice in one object"):
        parse(body.encode())


def test_a_string_holding_key_ends_is_not_taken_for_a_repeated_key() -> None:
    titled = b'{"item_id": "a", "category": "x", "title": "say \\"hi\\": \\"yo\\" :"}'
    assert parse_catalogue_item(titled).title == 'say "hi": "yo" :'
    with pytest.raises(InvalidEvent, match=r"^event: the key 'category' appears twice"):
        parse_catalogue_item(b'{"item_id": "a", "category": "x", "category": "y"}')


def test_impression_page_must_be_consistent() -> None:
    # Each reason names its field (these were labelled "event").
    clash = {**VALID["impression"], "items": [{"item_id": "a", "position": 1}] * 2}
    with pytest.raises(InvalidEvent, match=r"^items: two slots share a position"):
        parse(clash)
    with pytest.raises(InvalidEvent, match=r"^variant: give experiment and variant both or"):
        parse({**VALID["impression"], "variant": None})
    no_variant = {k: v for k, v in VALID["impression"].items() if k != "variant"}
    with pytest.raises(InvalidEvent, match=r"^variant: give experiment and variant both or"):
        parse(no_variant)
    with pytest.raises(InvalidEvent, match=r"^variant: give experiment and variant both or"):
        parse({**VALID["impression"], "experiment": None})
    neither = {k: v for k, v in no_variant.items() if k != "experiment"}
    assert parse(neither).variant is None
    with pytest.raises(InvalidEvent, match=r"^items: "):
        parse({**VALID["impression"], "items": []})


def test_every_generated_corruption_is_rejected() -> None:
    generator = FeedGenerator()
    event = next(generator.events(1))
    for kind in CORRUPTIONS:
        with pytest.raises(InvalidEvent):
            parse_event(generator.corrupt(event, kind))


def test_catalogue_item_is_strict() -> None:
    item = CatalogueItem(item_id="i1", category="toys", title="Ball", price=Decimal("2.50"))
    assert item.brand is None
    with pytest.raises(ValueError, match="price"):
        CatalogueItem(item_id="i1", category="toys", price=Decimal("-1"))
