"""The event store on real DuckDB and Parquet files (no broker needed)."""

from __future__ import annotations

import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import pytest

from schemas import CatalogueItem, parse_event
from streams.store.event_store import EventStore, SourceMismatch
from streams.store.ledger_schema import LedgerBatch, SourceRecord, event_from_row
from streams.store.store_views import CATALOG_FILE, connect_store, view_definitions, write_catalog
from tests.test_schemas import NOW, VALID


def source(offset: int, partition: int = 0, topic: str = "t") -> SourceRecord:
    return SourceRecord(topic, partition, offset, b"u-1", NOW)


def one_of_each() -> LedgerBatch:
    batch = LedgerBatch()
    for offset, kind in enumerate(["impression", "click", "purchase", "rating"]):
        doc = {**VALID[kind], "event_id": f"e-{kind}"}
        batch.add_accepted(parse_event(json.dumps(doc), now=NOW), source(offset))
    batch.add_rejected(b"\x00garbage", "event: Invalid JSON", source(4))
    return batch


def test_empty_store_views_bind_and_are_empty(store: EventStore) -> None:
    con = connect_store(store.root)
    for view in view_definitions(store, store.current_ledger()):
        assert con.execute(f"SELECT count(*) FROM {view}").fetchone() == (0,)


def test_views_expose_each_event_type(store: EventStore) -> None:
    store.write_batch(one_of_each(), "w1")
    con = connect_store(store.root)
    counts = dict(con.execute("SELECT type, count(*) FROM events GROUP BY 1").fetchall())
    assert counts == {"impression": 1, "click": 1, "purchase": 1, "rating": 1}
    assert con.execute(
        "SELECT item_id, position FROM impressed_items ORDER BY position"
    ).fetchall() == [("i1", 1), ("i2", 2)]
    assert con.execute("SELECT experiment, variant, page_size FROM impressions").fetchone() == (
        "exp",
        "treatment",
        2,
    )
    assert con.execute("SELECT item_id, position, request_id FROM clicks").fetchone() == (
        "i2",
        2,
        "r-1",
    )
    gmv, currency = con.execute("SELECT gmv, currency FROM purchases").fetchone()
    assert (str(gmv), currency) == ("59.9700", "EUR")
    assert con.execute("SELECT rating FROM ratings").fetchone() == (4,)
    assert con.execute("SELECT kafka_offset, reason, raw FROM rejected_events").fetchone() == (
        4,
        "event: Invalid JSON",
        b"\x00garbage",
    )


def test_watermarks_are_the_highest_stored_offsets(store: EventStore) -> None:
    batch = LedgerBatch()
    batch.add_rejected(b"x", "r", source(41, partition=1))
    batch.add_rejected(b"x", "r", source(7, partition=3))
    batch.add_rejected(b"x", "r", source(99, partition=1, topic="other"))
    store.write_batch(batch, "w1")
    assert store.stored_watermarks("t", [0, 1, 3]) == {0: -1, 1: 41, 3: 7}


def test_temporary_files_are_invisible_and_orphans_are_removed(store: EventStore) -> None:
    partition = store.ledger_dir / "date=2026-06-01"
    partition.mkdir()
    orphan = partition / ".half-written.parquet.tmp"
    orphan.write_bytes(b"PAR1 truncated")
    con = connect_store(store.root)
    assert con.execute("SELECT count(*) FROM ingested").fetchone() == (0,)
    old = time.time() - 7200
    os.utime(orphan, (old, old))
    assert store.remove_orphaned_temporaries(older_than_s=3600) == 1
    assert not orphan.exists()


def test_catalog_opens_read_only_in_another_connection(store: EventStore) -> None:
    store.write_batch(one_of_each(), "w1")
    assert write_catalog(store) == store.root / CATALOG_FILE
    with duckdb.connect(str(store.root / CATALOG_FILE), read_only=True) as con:
        assert con.execute("SELECT count(*) FROM events").fetchone() == (4,)
        # A batch written after the catalog was opened is visible to the next query.
        store.write_batch(one_of_each(), "w2")
        assert con.execute("SELECT count(*) FROM events").fetchone() == (8,)


def test_batch_file_lands_in_a_date_partition(store: EventStore) -> None:
    path = store.write_batch(one_of_each(), "w1")
    assert path.parent.name == f"date={datetime.now(UTC):%Y-%m-%d}"
    assert "-w1-" in path.name
    assert not list(path.parent.glob(".*.tmp"))


def test_missing_store_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no event store"):
        connect_store(tmp_path / "nowhere")


def test_store_refuses_another_incarnation_of_its_topic(store: EventStore) -> None:
    store.bind_source("events", "id-1")
    store.bind_source("events", "id-1")  # the same topic again: fine
    store.bind_source("other", "id-9")  # another topic: recorded beside it
    with pytest.raises(SourceMismatch, match=r"topic 'events' with id id-1.*now has id id-2"):
        store.bind_source("events", "id-2")


def test_concurrent_initialisation_of_a_fresh_store(tmp_path: Path) -> None:
    stores = [EventStore(tmp_path / "store") for _ in range(8)]
    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(lambda s: s.init(), stores))  # re-raises any writer's error
    assert connect_store(tmp_path / "store").execute(
        "SELECT count(*) FROM ingested"
    ).fetchone() == (0,)


def test_catalogue_view_keeps_the_latest_record_per_item(store: EventStore) -> None:
    batch = one_of_each()
    item = lambda i, cat: CatalogueItem(item_id=i, category=cat, title=i.upper())  # noqa: E731
    batch.add_catalogue_item(item("a", "toys"), source(10, topic="cat"))
    batch.add_catalogue_item(item("b", "books"), source(11, topic="cat"))
    batch.add_catalogue_item(item("a", "games"), source(12, topic="cat"))
    store.write_batch(batch, "w1")
    con = connect_store(store.root)
    assert sorted(con.execute("SELECT item_id, category, title FROM catalogue").fetchall()) == [
        ("a", "games", "A"),
        ("b", "books", "B"),
    ]
    assert con.execute("SELECT count(*) FROM events").fetchone() == (4,)


def test_ledger_rows_give_back_their_events() -> None:
    batch = one_of_each()
    rows = [r for r in batch.to_table().to_pylist() if r["reject_reason"] is None]
    sent = [
        parse_event(json.dumps({**VALID[k], "event_id": f"e-{k}"}), now=NOW)
        for k in ("impression", "click", "purchase", "rating")
    ]
    assert [event_from_row(r) for r in rows] == sent


def test_a_store_written_before_a_column_existed_still_reads(tmp_path: Path) -> None:
    # A store of an older version: its seed and files lack `dead_letter` (added later).
    store = EventStore(tmp_path / "old")
    batch = LedgerBatch()
    batch.add_rejected(b"{oops", "event: Invalid JSON", source(0))
    old = batch.to_table().drop_columns(["dead_letter"])
    store.write_table("ingested", old, "w-old")
    assert connect_store(store.root).execute(
        "SELECT raw, reason, dead_letter FROM rejected_events"
    ).fetchall() == [(b"{oops", "event: Invalid JSON", None)]
    # The next worker's init re-seeds with the current schema; old files still read.
    store.init()
    assert connect_store(store.root).execute(
        "SELECT typeof(dead_letter), count(*) FROM rejected_events GROUP BY 1"
    ).fetchall() == [("VARCHAR", 1)]


def test_the_store_imports_neither_ingest_nor_derive() -> None:
    # The ground floor: ingest and derive stand on the store, never the other way round, and
    # never on each other.
    import ast

    root = Path(__file__).resolve().parents[1] / "streams"
    forbidden = {"store": ("streams.ingest", "streams.derive"), "ingest": ("streams.derive",),
                 "derive": ("streams.ingest",)}  # fmt: skip
    for room, banned in forbidden.items():
        for path in (root / room).glob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.ImportFrom | ast.Import):
                    names = [node.module or ""] if isinstance(node, ast.ImportFrom) else [
                        a.name for a in node.names
                    ]  # fmt: skip
                    assert not any(n.startswith(banned) for n in names), (path.name, names)


def test_views_registered_with_the_store_name_their_datasets_wherever_it_lies(
    tmp_path: Path,
) -> None:
    from streams.derive.derived_tables import init_derived

    store = EventStore(tmp_path / "shop's store")
    store.init()
    assert "golden_lists" not in {
        r[0] for r in connect_store(store.root).execute("SHOW TABLES").fetchall()
    }
    init_derived(store)
    assert "{table:derived/golden_lists}" in store.registered_views()["golden_lists"]
    moved = store.root.rename(tmp_path / "moved")
    con = connect_store(moved)
    assert con.execute("SELECT count(*) FROM golden_lists").fetchall() == [(0,)]


def test_views_registered_while_a_connection_is_made_are_read_once(
    store: EventStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A derive worker registers its views just after a connecting reader first read the
    # registered views: the reader must use the one reading throughout (it once read them
    # again and found a dataset it had not pinned: KeyError).
    from streams.derive.derived_tables import init_derived

    read = EventStore.registered_views
    reads = []

    def registering_meanwhile(self: EventStore) -> dict[str, str]:
        views = read(self)
        reads.append(views)
        if len(reads) == 1:
            init_derived(self)
        return views

    monkeypatch.setattr(EventStore, "registered_views", registering_meanwhile)
    con = connect_store(store.root)
    assert "golden_lists" not in {r[0] for r in con.execute("SHOW TABLES").fetchall()}
    monkeypatch.undo()
    assert connect_store(store.root).execute("SELECT count(*) FROM golden_lists").fetchall() == [
        (0,)
    ]


def test_an_event_resent_as_a_new_record_is_listed_as_a_duplicate(store: EventStore) -> None:
    event = parse_event(json.dumps({**VALID["click"], "event_id": "e-twice"}), now=NOW)
    other = parse_event(json.dumps({**VALID["click"], "event_id": "e-once"}), now=NOW)
    batch = LedgerBatch()
    for offset, e in enumerate((event, other, event)):
        batch.add_accepted(e, source(offset, partition=2))
    store.write_batch(batch, "w1")
    con = connect_store(store.root)
    assert con.execute("SELECT count(*) FROM events").fetchall() == [(3,)]
    assert con.execute("SELECT event_id, copies, records FROM duplicate_events").fetchall() == [
        (
            "e-twice",
            2,
            [
                {"topic": "t", "partition": 2, "offset": 0},
                {"topic": "t", "partition": 2, "offset": 2},
            ],
        )
    ]
