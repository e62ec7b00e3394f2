"""Snapshots: pinned to a stream position, reproducible from their id, obeying the split."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from schemas import CatalogueItem, Rating
from streams.derive.derived_state import DeriveConfig
from streams.derive.snapshot_store import (
    SnapshotError,
    create_snapshot,
    load_snapshot,
    take_snapshot,
)
from streams.store.event_store import EventStore
from streams.store.ledger_schema import LedgerBatch, SourceRecord

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def write_ratings(store: EventStore, users: range, seed: int, first_offset: int) -> int:
    """One batch of random ratings and catalogue records; returns the next free offset."""
    rng = random.Random(seed)
    batch = LedgerBatch()
    offset = first_offset
    for n in range(60):
        batch.add_catalogue_item(
            CatalogueItem(item_id=f"i{n}", category=f"c{n % 5}", price=Decimal(n)),
            SourceRecord("catalogue", 0, offset, None, None),
        )
        offset += 1
    for u in users:
        for k, n in enumerate(rng.sample(range(60), 25)):
            event = Rating(
                type="rating",
                event_id=f"e{seed}-{u}-{n}",
                user_id=f"u{u}",
                session_id="s",
                ts=T0 + timedelta(minutes=k + seed * 100),
                item_id=f"i{n}",
                rating=rng.choice([1, 2, 3, 4, 5, 5]),
            )
            batch.add_accepted(event, SourceRecord("events", u % 4, offset, None, None))
            offset += 1
    store.write_batch(batch, "w")
    return offset


def test_a_snapshot_is_reproducible_from_its_id(store: EventStore) -> None:
    offset = write_ratings(store, range(40), seed=1, first_offset=0)
    manifest = create_snapshot(store, DeriveConfig(prompt_length=5, seed=9))
    _, first = load_snapshot(store, manifest.snapshot_id)
    assert first.golden and all(first.pairs.get(f) for f in ("np", "rk", "d", "rd"))
    assert set(first.catalogue) == {f"i{n}" for n in range(60)}
    assert manifest.stream_position["catalogue/0"] == 59

    write_ratings(store, range(40, 80), seed=2, first_offset=offset)  # the stream moves on
    _, again = load_snapshot(store, manifest.snapshot_id)
    assert again == first
    later = create_snapshot(store, DeriveConfig(prompt_length=5, seed=9))
    assert later.snapshot_id != manifest.snapshot_id
    assert len(load_snapshot(store, later.snapshot_id)[1].golden) > len(first.golden)
    assert create_snapshot(store, DeriveConfig(prompt_length=5, seed=9)) == later
    taken, data = take_snapshot(store, DeriveConfig(prompt_length=5, seed=9))
    assert taken == later and data == load_snapshot(store, later.snapshot_id)[1]


def test_snapshot_split_follows_the_protocol(store: EventStore) -> None:
    write_ratings(store, range(30), seed=3, first_offset=0)
    _, snapshot = load_snapshot(store, create_snapshot(store).snapshot_id)
    for user, golden in snapshot.golden.items():
        val, test = snapshot.validation[user], snapshot.test[user]
        assert len(val) >= 1 and len(test) >= 1
        assert not (set(val) | set(test)) & (set(golden.items) | set(snapshot.prompts[user].items))


def test_unknown_or_unreadable_snapshots_are_clear_errors(store: EventStore) -> None:
    write_ratings(store, range(5), seed=4, first_offset=0)
    manifest = create_snapshot(store)
    with pytest.raises(SnapshotError, match=f"no snapshot 'nope'.*known: {manifest.snapshot_id}"):
        load_snapshot(store, "nope")
    for f in store.ledger_files()[1:]:  # all but the seed
        (store.root / f).unlink()
    with pytest.raises(SnapshotError, match="can no longer be reproduced"):
        load_snapshot(store, manifest.snapshot_id)
