"""Consistent, versioned snapshots of the training data for the learner.

The event store's files are immutable, so "the stream up to a point" is a set of files. A
snapshot's manifest records that set and the derivation settings; its id is a hash of both.
Loading a snapshot reads exactly those files in stream order (per partition, by offset) and
derives the training data with pure functions, so the same id always yields the same data,
however much has been ingested since.
"""

from __future__ import annotations

import hashlib
import json
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

SNAPSHOT_DIR = "snapshots"


class SnapshotError(LookupError):
    """A snapshot that cannot be found or no longer be read; the message says which."""


@dataclass(frozen=True)
class SnapshotManifest:
    snapshot_id: str
    created_at: str
    files: tuple[str, ...]
    stream_position: dict[str, int]
    config: dict[str, object]


def _stream_position(store: EventStore, files: list[str]) -> dict[str, int]:
    """Highest offset per ``topic/partition`` the files hold: where in the stream this is."""
    with duckdb.connect() as con:
        rows = con.execute(
            "SELECT kafka_topic, kafka_partition, max(kafka_offset) FROM read_parquet(?) "
            "WHERE kafka_topic IS NOT NULL GROUP BY 1, 2 ORDER BY 1, 2",
            [[str(store.root / f) for f in files]],
        ).fetchall()
    return {f"{topic}/{partition}": int(offset) for topic, partition, offset in rows}


def create_snapshot(store: EventStore, config: DeriveConfig | None = None) -> SnapshotManifest:
    """Pin the store's current files as a snapshot; returns its manifest (saved in the store)."""
    config = config or DeriveConfig()
    files = store.ledger_files()
    identity = json.dumps({"files": files, "config": config.model_dump()}, sort_keys=True)
    snapshot_id = hashlib.sha256(identity.encode()).hexdigest()[:16]
    path = store.root / SNAPSHOT_DIR / f"{snapshot_id}.json"
    if path.exists():
        return read_manifest(store, snapshot_id)
    manifest = SnapshotManifest(
        snapshot_id=snapshot_id,
        created_at=datetime.now(UTC).isoformat(),
        files=tuple(files),
        stream_position=_stream_position(store, files),
        config=config.model_dump(),
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path, json.dumps(manifest.__dict__, indent=1, default=list))
    return manifest


def read_manifest(store: EventStore, snapshot_id: str) -> SnapshotManifest:
    path = store.root / SNAPSHOT_DIR / f"{snapshot_id}.json"
    if not path.exists():
        known = sorted(p.stem for p in path.parent.glob("*.json")) if path.parent.exists() else []
        raise SnapshotError(
            f"no snapshot {snapshot_id!r} in {store.root}; known: {', '.join(known) or 'none'}"
        )
    doc = json.loads(path.read_text())
    doc["files"] = tuple(doc["files"])
    return SnapshotManifest(**doc)


def read_stream(
    store: EventStore, files: tuple[str, ...]
) -> tuple[list[Event], dict[str, CatalogueItem]]:
    """Accepted events in stream order and the latest catalogue record per item."""
    missing = [f for f in files if not (store.root / f).exists()]
    if missing:
        raise SnapshotError(
            f"{len(missing)} of the snapshot's files are gone from {store.root} "
            f"(first: {missing[0]}); the snapshot can no longer be reproduced"
        )
    store.init()  # the seed, read with the files, holds every column older files may lack
    paths = [str(store.seed_path(LEDGER_DIR)), *(str(store.root / f) for f in files)]
    with duckdb.connect() as con:
        table = con.sql(
            "SELECT * FROM read_parquet(?, union_by_name = true) WHERE reject_reason IS NULL "
            "AND duplicate IS NOT TRUE ORDER BY kafka_topic, kafka_partition, kafka_offset",
            params=[paths],
        ).to_arrow_table()
    events: list[Event] = []
    catalogue: dict[str, CatalogueItem] = {}
    for row in table.to_pylist():
        if row["type"] == "catalogue":
            catalogue[row["item_id"]] = catalogue_item_from_row(row)
        else:
            events.append(event_from_row(row))
    return events, catalogue


def load_snapshot(store: EventStore, snapshot_id: str) -> tuple[SnapshotManifest, TrainingSnapshot]:
    """The training data of a snapshot, derived afresh from exactly its files."""
    manifest = read_manifest(store, snapshot_id)
    config = DeriveConfig.model_validate(manifest.config)
    events, catalogue = read_stream(store, manifest.files)
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
