"""Consistent, versioned snapshots of the training data for the learner.

"The stream up to a point" is a stream position: the highest offset of each Kafka partition
the store holds. A partition's records are stored in offset order and a replay is never
stored again, so the rows at or below a position never change, whatever the store ingests or
the compactor merges afterwards. A snapshot's manifest records that position, how many rows
it covers (to detect a store that lost some) and the derivation settings; its id is a hash of
the position and the settings. Loading a snapshot reads exactly those rows in stream order
(per partition, by offset) and derives the training data with pure functions, so the same id
always yields the same data, however much has been ingested or compacted since.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

import duckdb

from schemas import CatalogueItem
from streams.derive.derived_state import DeriveConfig, Event
from streams.derive.feedback_ratings import effective_ratings
from streams.derive.training_snapshot import TrainingSnapshot, build_training_snapshot
from streams.store.atomic_files import write_atomically
from streams.store.event_store import LEDGER_DIR, EventStore
from streams.store.ledger_schema import catalogue_item_from_row, event_from_row
from streams.store.sql_literals import sql_literal

SNAPSHOT_DIR = "snapshots"


class SnapshotError(LookupError):
    """A snapshot that cannot be found or no longer be read; the message says which."""


@dataclass(frozen=True)
class SnapshotManifest:
    snapshot_id: str
    created_at: str
    stream_position: dict[str, int]  # "topic/partition" -> highest offset included
    config: dict[str, object]
    rows: int | None = None  # ledger rows at or below the position (None: an older snapshot)


def _up_to(position: Mapping[str, int]) -> tuple[str, list[object]]:
    """A SQL condition (and its parameters) true for the rows at or below ``position``."""
    if not position:
        return "false", []
    terms, params = [], []
    for key, offset in sorted(position.items()):
        topic, partition = key.rsplit("/", 1)
        terms.append("(kafka_topic = ? AND kafka_partition = ? AND kafka_offset <= ?)")
        params += [topic, int(partition), offset]
    return "(" + " OR ".join(terms) + ")", params


def _scan(store: EventStore, files: tuple[str, ...]) -> str:
    """The files and the ledger's seed (it holds every column older files may lack)."""
    missing = [f for f in files if not (store.root / f).exists()]
    if missing:
        raise SnapshotError(
            f"{len(missing)} of the ledger's files are gone from {store.root} "
            f"(first: {missing[0]}); read the store again from its current files"
        )
    store.init()
    paths = [str(store.seed_path(LEDGER_DIR)), *store.absolute(files)]
    return "read_parquet([" + ", ".join(map(sql_literal, paths)) + "], union_by_name = true)"


def create_snapshot(store: EventStore, config: DeriveConfig | None = None) -> SnapshotManifest:
    """Pin the store's current stream position as a snapshot; returns its manifest (saved in
    the store)."""
    config = config or DeriveConfig()
    with duckdb.connect() as con:
        rows = con.execute(
            "SELECT kafka_topic, kafka_partition, max(kafka_offset), count(*) "
            f"FROM {_scan(store, store.current_ledger().files)} "
            "WHERE kafka_topic IS NOT NULL GROUP BY 1, 2 ORDER BY 1, 2"
        ).fetchall()
    position = {f"{topic}/{partition}": int(offset) for topic, partition, offset, _ in rows}
    identity = json.dumps({"position": position, "config": config.model_dump()}, sort_keys=True)
    snapshot_id = hashlib.sha256(identity.encode()).hexdigest()[:16]
    path = store.root / SNAPSHOT_DIR / f"{snapshot_id}.json"
    if path.exists():
        return read_manifest(store, snapshot_id)
    manifest = SnapshotManifest(
        snapshot_id=snapshot_id,
        created_at=datetime.now(UTC).isoformat(),
        stream_position=position,
        config=config.model_dump(),
        rows=sum(int(n) for *_, n in rows),
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path, json.dumps(manifest.__dict__, indent=1))
    return manifest


def read_manifest(store: EventStore, snapshot_id: str) -> SnapshotManifest:
    path = store.root / SNAPSHOT_DIR / f"{snapshot_id}.json"
    if not path.exists():
        known = sorted(p.stem for p in path.parent.glob("*.json")) if path.parent.exists() else []
        raise SnapshotError(
            f"no snapshot {snapshot_id!r} in {store.root}; known: {', '.join(known) or 'none'}"
        )
    doc = json.loads(path.read_text())
    doc.pop("files", None)  # snapshots made before the compactor named files, not a position
    return SnapshotManifest(**doc)


def read_stream(
    store: EventStore, files: tuple[str, ...], up_to: Mapping[str, int] | None = None
) -> tuple[list[Event], dict[str, CatalogueItem], set[str]]:
    """Accepted events of ``files`` (at or below the position ``up_to``) in stream order, the
    latest item record per item, and the items whose latest catalogue record is a deletion."""
    where, params = _up_to(up_to) if up_to is not None else ("true", [])
    with duckdb.connect() as con:
        table = con.sql(
            f"SELECT * FROM {_scan(store, files)} WHERE {where} AND reject_reason IS NULL "
            "AND duplicate IS NOT TRUE ORDER BY kafka_topic, kafka_partition, kafka_offset",
            params=params,
        ).to_arrow_table()
    events: list[Event] = []
    catalogue: dict[str, CatalogueItem] = {}
    deleted: set[str] = set()
    for row in table.to_pylist():
        if row["type"] != "catalogue":
            events.append(event_from_row(row))
        elif row["category"] is None:  # a deletion: the item's last record stays its record
            deleted.add(row["item_id"])
        else:
            catalogue[row["item_id"]] = catalogue_item_from_row(row)
            deleted.discard(row["item_id"])
    return events, catalogue, deleted


def _check_rows(store: EventStore, files: tuple[str, ...], manifest: SnapshotManifest) -> None:
    """Refuse a snapshot whose rows the store no longer holds in full."""
    if manifest.rows is None:
        return
    where, params = _up_to(manifest.stream_position)
    with duckdb.connect() as con:
        (held,) = con.execute(
            f"SELECT count(*) FROM {_scan(store, files)} WHERE {where}", params
        ).fetchone()  # type: ignore[misc]
    if held != manifest.rows:
        raise SnapshotError(
            f"snapshot {manifest.snapshot_id} covered {manifest.rows} ledger rows, the store "
            f"at {store.root} now holds {held} of them: it can no longer be reproduced"
        )


def load_snapshot(store: EventStore, snapshot_id: str) -> tuple[SnapshotManifest, TrainingSnapshot]:
    """The training data of a snapshot, derived afresh from exactly its rows."""
    manifest = read_manifest(store, snapshot_id)
    config = DeriveConfig.model_validate(manifest.config)
    files = store.current_ledger().files
    _check_rows(store, files, manifest)
    # A deleted item keeps its last record here: training reads what users did with it.
    events, catalogue, _ = read_stream(store, files, up_to=manifest.stream_position)
    by_user: dict[str, list[Event]] = {}
    for event in events:
        by_user.setdefault(event.user_id, []).append(event)
    ratings = {user: effective_ratings(evs, config.rule) for user, evs in by_user.items()}
    return manifest, build_training_snapshot(ratings, catalogue, config)


def take_snapshot(
    store: EventStore, config: DeriveConfig | None = None
) -> tuple[SnapshotManifest, TrainingSnapshot]:
    """The learner's one call: pin the store as it is now and derive its training data."""
    manifest = create_snapshot(store, config)
    return load_snapshot(store, manifest.snapshot_id)


def pin_snapshot(
    store: EventStore, snapshot_id: str | None, config: DeriveConfig | None = None
) -> tuple[SnapshotManifest, TrainingSnapshot]:
    """The given snapshot, or (``None`` / ``latest``) the store as it is now."""
    if snapshot_id in (None, "latest"):
        return take_snapshot(store, config)
    return load_snapshot(store, snapshot_id)
