"""The ledger row layout: one row per consumed Kafka record, accepted or rejected.

An accepted event fills its type's columns (and ``duplicate``: whether its event id was
already stored), an accepted catalogue record (type ``catalogue``) the item's, or only its
``item_id`` for a deletion (a tombstone: no category, which every item has); a rejected
record keeps its reason, its raw bytes (null for a null value) and what became of it on the
dead-letter topic.
Both kinds of row carry the record's topic, partition and offset, which is what makes a replay
recognisable (see ``event_store.EventStore.stored_watermarks``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime

import pyarrow as pa

from schemas import CatalogueItem, Click, Impression, PageSlot, Purchase, Rating

MONEY = pa.decimal128(18, 4)
TIMESTAMP = pa.timestamp("us", tz="UTC")

LEDGER_SCHEMA = pa.schema(
    [
        ("event_id", pa.string()),
        ("type", pa.string()),
        ("user_id", pa.string()),
        ("session_id", pa.string()),
        ("ts", TIMESTAMP),
        ("schema_version", pa.int16()),
        ("request_id", pa.string()),
        ("item_id", pa.string()),
        ("position", pa.int16()),
        ("quantity", pa.int32()),
        ("unit_price", MONEY),
        ("currency", pa.string()),
        ("gmv", MONEY),
        ("rating", pa.int8()),
        ("model_version", pa.string()),
        ("experiment", pa.string()),
        ("variant", pa.string()),
        (
            "page",
            pa.list_(pa.struct([("item_id", pa.string()), ("position", pa.int16())])),
        ),
        ("category", pa.string()),
        ("brand", pa.string()),
        ("title", pa.string()),
        ("price", MONEY),
        ("kafka_topic", pa.string()),
        ("kafka_partition", pa.int32()),
        ("kafka_offset", pa.int64()),
        ("kafka_key", pa.binary()),
        ("kafka_timestamp", TIMESTAMP),
        ("ingested_at", TIMESTAMP),
        ("reject_reason", pa.string()),
        ("raw", pa.binary()),
        ("dead_letter", pa.string()),  # what became of a rejected record on the dead-letter topic
        # True on a later copy of an event id its partition already held (the first one wins).
        ("duplicate", pa.bool_()),
    ]
)

_COLUMNS = tuple(LEDGER_SCHEMA.names)
_EVENT_COLUMNS = _COLUMNS[: _COLUMNS.index("kafka_topic")]

# What Arrow raises on a value its column's type cannot hold (an integer past int8, a decimal
# past 18 digits, a time past year 9999).
UNSTORABLE = (pa.ArrowException, ValueError, TypeError, OverflowError)


@dataclass(frozen=True)
class SourceRecord:
    """Where a record came from in Kafka."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    timestamp: datetime | None


_TYPE_FIELDS: dict[str, tuple[type[Impression | Click | Purchase | Rating], tuple[str, ...]]] = {
    "impression": (Impression, ("request_id", "model_version", "experiment", "variant")),
    "click": (Click, ("request_id", "item_id", "position")),
    "purchase": (Purchase, ("request_id", "item_id", "quantity", "unit_price", "currency")),
    "rating": (Rating, ("item_id", "rating")),
}
_COMMON_FIELDS = ("event_id", "type", "user_id", "session_id", "ts", "schema_version")


def _event_columns(event: Impression | Click | Purchase | Rating) -> dict[str, object]:
    """The typed columns an event fills; the others stay null."""
    _, fields = _TYPE_FIELDS[event.type]
    row = {name: getattr(event, name) for name in (*_COMMON_FIELDS, *fields)}
    if isinstance(event, Impression):
        row["page"] = [{"item_id": s.item_id, "position": s.position} for s in event.items]
    elif isinstance(event, Purchase):
        row["gmv"] = event.gmv
    return row


def event_from_row(row: dict[str, object]) -> Impression | Click | Purchase | Rating:
    """The event an accepted ledger row holds (the inverse of the columns it filled)."""
    model, fields = _TYPE_FIELDS[str(row["type"])]
    values = {name: row[name] for name in (*_COMMON_FIELDS, *fields) if row[name] is not None}
    if model is Impression:
        values["items"] = [PageSlot(**slot) for slot in row["page"]]  # type: ignore[union-attr]
    return model.model_validate(values)


def catalogue_item_from_row(row: dict[str, object]) -> CatalogueItem:
    """The catalogue item a ``catalogue`` ledger row holds."""
    fields = ("item_id", "category", "brand", "title", "price")
    return CatalogueItem.model_validate({k: row[k] for k in fields if row[k] is not None})


@dataclass
class LedgerBatch:
    """Rows of one micro-batch, accumulated column by column."""

    columns: dict[str, list[object]] = field(
        default_factory=lambda: {name: [] for name in _COLUMNS}
    )
    accepted: int = 0
    rejected: int = 0

    def __len__(self) -> int:
        return self.accepted + self.rejected

    def add_accepted(
        self,
        event: Impression | Click | Purchase | Rating,
        source: SourceRecord,
        duplicate: bool = False,
    ) -> None:
        self._add_accepted_row(_event_columns(event), source)
        self.columns["duplicate"][-1] = duplicate

    def add_catalogue_item(self, item: CatalogueItem, source: SourceRecord) -> None:
        """A catalogue record: a row of type ``catalogue`` (the latest per item counts)."""
        self._add_accepted_row({"type": "catalogue", **item.model_dump()}, source)

    def add_catalogue_deletion(self, item_id: str, source: SourceRecord) -> None:
        """A catalogue tombstone: a ``catalogue`` row with the item id alone (no category)."""
        self._add_accepted_row({"type": "catalogue", "item_id": item_id}, source)

    def add_rejected(self, raw: bytes | None, reason: str, source: SourceRecord) -> int:
        """A rejected record's row; returns its index, for ``note_dead_letter``."""
        self._add_event_columns({})
        self._add_source(source, reason=reason, raw=raw)
        self.rejected += 1
        return len(self.columns["raw"]) - 1

    def _add_accepted_row(self, row: dict[str, object], source: SourceRecord) -> None:
        self._add_event_columns(row)
        self._add_source(source, reason=None, raw=None)
        self.accepted += 1

    def _add_event_columns(self, row: dict[str, object]) -> None:
        """Each event column's value from ``row``; null where it has none."""
        for name in _EVENT_COLUMNS:
            self.columns[name].append(row.get(name))

    def note_dead_letter(self, row: int, outcome: str) -> None:
        self.columns["dead_letter"][row] = outcome

    def unstorable_rows(self) -> dict[int, str]:
        """The rows holding a value that its column's type cannot hold, each with the first
        such column and Arrow's reason: what ``to_table`` fails on."""
        found: dict[int, str] = {}
        for name, values in self.columns.items():
            if name == "ingested_at":
                continue
            kind = LEDGER_SCHEMA.field(name).type
            try:
                pa.array(values, type=kind)
                continue
            except UNSTORABLE:
                pass  # find which rows, one value at a time
            for row, value in enumerate(values):
                try:
                    pa.array([value], type=kind)
                except UNSTORABLE as exc:
                    found.setdefault(row, f"{name}: {type(exc).__name__}: {exc}")
        return found

    def park(self, row: int, reason: str, raw: bytes | None, dead_letter: str) -> None:
        """Turn accepted ``row`` into a rejected one: its reason and raw bytes instead of its
        columns."""
        for name in _EVENT_COLUMNS:
            self.columns[name][row] = None
        self.columns["reject_reason"][row] = reason
        self.columns["raw"][row] = raw
        self.columns["dead_letter"][row] = dead_letter
        self.columns["duplicate"][row] = None
        self.accepted -= 1
        self.rejected += 1

    def _add_source(self, source: SourceRecord, reason: str | None, raw: bytes | None) -> None:
        c = self.columns
        c["kafka_topic"].append(source.topic)
        c["kafka_partition"].append(source.partition)
        c["kafka_offset"].append(source.offset)
        c["kafka_key"].append(source.key)
        c["kafka_timestamp"].append(source.timestamp)
        c["reject_reason"].append(reason)
        c["raw"].append(raw)
        c["dead_letter"].append(None)
        c["duplicate"].append(None)

    def to_table(self, ingested_at: datetime | None = None) -> pa.Table:
        """The batch as an Arrow table in ``LEDGER_SCHEMA``, stamped with its ingestion time."""
        stamp = ingested_at or datetime.now(UTC)
        arrays = {
            name: pa.array(values, type=LEDGER_SCHEMA.field(name).type)
            for name, values in self.columns.items()
            if name != "ingested_at"
        }
        arrays["ingested_at"] = pa.array([stamp] * len(self), type=TIMESTAMP)
        return pa.table([arrays[name] for name in _COLUMNS], schema=LEDGER_SCHEMA)


def empty_ledger_table() -> pa.Table:
    """A zero-row table in ``LEDGER_SCHEMA`` (seeds the store so views always bind)."""
    return LEDGER_SCHEMA.empty_table()
