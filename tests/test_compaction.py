"""The compactor on real Parquet files and DuckDB: every row once, before, during and after."""

from __future__ import annotations

import json
import re
import threading
from datetime import UTC, datetime, timedelta

import duckdb
import pyarrow as pa
import pytest

from schemas import parse_event
from streams.derive.derive_worker import DeriveWorker
from streams.derive.derived_state import DeriveConfig
from streams.derive.snapshot_store import create_snapshot, load_snapshot
from streams.store.compaction_manifest import compacted_dir, read_manifest
from streams.store.compactor import compact, compaction_status, purge
from streams.store.event_store import EventStore, PinnedFiles
from streams.store.ledger_follower import LedgerFollower
from streams.store.ledger_schema import LedgerBatch, SourceRecord
from streams.store.store_views import CATALOG_FILE, connect_store, fresh_horizon, write_catalog
from tests.test_cli import pagellm
from tests.test_schemas import NOW, VALID
from tests.test_snapshots import write_ratings

DAYS = 5


def write_days(store: EventStore, first_offset: int, days: int = DAYS, per_day: int = 10) -> int:
    """One batch per event date (today back to ``days`` ago), plus a rejected record each;
    partitions 0 and 1 alternate. Returns the next free offset."""
    offset = first_offset
    for day in range(days):
        batch = LedgerBatch()
        for k in range(per_day):
            ts = NOW - timedelta(days=day, minutes=k)
            doc = {**VALID["click"], "event_id": f"e{offset}", "ts": ts.isoformat()}
            source = SourceRecord("t", offset % 2, offset, b"u-1", NOW)
            batch.add_accepted(parse_event(json.dumps(doc), now=NOW), source)
            offset += 1
        batch.add_rejected(b"x", "event: Invalid JSON", SourceRecord("t", 0, offset, b"u", NOW))
        offset += 1
        store.write_batch(batch, "w")
    return offset


def counts(con: duckdb.DuckDBPyConnection) -> tuple:
    return con.execute(
        "SELECT (SELECT count(*) FROM ingested), (SELECT count(DISTINCT event_id) FROM events), "
        "(SELECT count(*) FROM events), (SELECT count(*) FROM rejected_events)"
    ).fetchone()


def test_compaction_merges_fresh_files_into_one_file_per_event_date(store: EventStore) -> None:
    write_days(store, 0)
    before = counts(connect_store(store.root))
    assert before == (55, 50, 50, 5)

    report = compact(store, min_age_s=0)

    manifest = read_manifest(store.root)
    ledger = manifest.of("ingested")
    dates = sorted(f.period for f in ledger.files.values())
    # Five event dates of clicks; the rejected records go with the day they were ingested.
    assert len(dates) == len(set(dates)) == report.written_files
    assert {(NOW - timedelta(days=d)).date().isoformat() for d in range(DAYS)} <= set(dates)
    assert report.fresh_files == DAYS and set(ledger.covered) == set(store.ledger_files()[1:])
    assert counts(connect_store(store.root)) == before
    assert manifest.offsets == {"t/0": 54, "t/1": 53}


def test_young_files_wait_for_the_next_compaction(store: EventStore) -> None:
    write_days(store, 0)
    assert compact(store, min_age_s=3600).fresh_files == 0
    assert read_manifest(store.root).version == 0


def test_a_late_event_is_merged_into_its_dates_small_compacted_file(store: EventStore) -> None:
    offset = write_days(store, 0)
    compact(store, min_age_s=0)
    late = LedgerBatch()
    doc = {**VALID["click"], "event_id": "late", "ts": (NOW - timedelta(days=2)).isoformat()}
    late.add_accepted(
        parse_event(json.dumps(doc), now=NOW), SourceRecord("t", 1, offset, b"u", NOW)
    )
    store.write_batch(late, "w")

    report = compact(store, min_age_s=0)

    assert (report.fresh_files, report.merged_files, report.written_files) == (1, 1, 1)
    ledger = read_manifest(store.root).of("ingested")
    day = (NOW - timedelta(days=2)).date().isoformat()
    assert [f.rows for f in ledger.files.values() if f.period == day] == [11]
    assert len(ledger.retired) == 1
    assert counts(connect_store(store.root)) == (56, 51, 51, 5)


def test_queries_running_through_a_compaction_see_every_row_once(store: EventStore) -> None:
    for start in range(0, 40 * 55, 55):
        write_days(store, start)  # 40 x 5 fresh files
    expected = counts(connect_store(store.root))
    opened_before = connect_store(store.root)
    seen: list[tuple] = []
    done = threading.Event()

    def query_until_done() -> None:
        while not done.is_set():
            seen.append(counts(opened_before))
            seen.append(counts(connect_store(store.root)))

    reader = threading.Thread(target=query_until_done)
    reader.start()
    try:
        compact(store, min_age_s=0)
        compact(store, min_age_s=0)  # nothing fresh left: a no-op, read through as well
    finally:
        done.set()
        reader.join()
    assert seen and set(seen) == {expected}
    assert counts(opened_before) == counts(connect_store(store.root)) == expected


def test_purge_deletes_merged_files_and_old_views_refuse_to_run(store: EventStore) -> None:
    write_days(store, 0)
    old = connect_store(store.root)
    compact(store, min_age_s=0)
    assert purge(store, retention_s=3600).deleted == 0  # still within the retention
    assert counts(old) == (55, 50, 50, 5)

    report = purge(store, retention_s=0)

    assert report.deleted == DAYS and report.readable_from == 1
    assert store.ledger_files() == [str(store.seed_path("ingested").relative_to(store.root))]
    with pytest.raises(duckdb.InvalidInputException, match="connect again"):
        counts(old)
    assert counts(connect_store(store.root)) == (55, 50, 50, 5)


def test_a_crashed_compactors_files_never_show_and_are_removed(store: EventStore) -> None:
    write_days(store, 0)
    compact(store, min_age_s=0)
    day = compacted_dir(store.root) / "ingested" / "event_date=2026-06-01"
    stray = day / "00000000000000000001-x.parquet"
    stray.write_bytes(next(day.glob("*.parquet")).read_bytes())
    staging = compacted_dir(store.root) / ".staging-dead"
    (staging / "event_date=2026-06-01").mkdir(parents=True)

    assert counts(connect_store(store.root)) == (55, 50, 50, 5)
    compact(store, min_age_s=0)
    assert not staging.exists()
    assert purge(store, retention_s=3600).deleted == 1 and not stray.exists()


def test_a_filter_on_event_date_reads_only_that_dates_files(store: EventStore) -> None:
    write_days(store, 0)
    compact(store, min_age_s=0)
    con = connect_store(store.root)
    since = (NOW - timedelta(days=1)).date()

    plan = con.execute(
        f"EXPLAIN ANALYZE SELECT count(*) FROM events WHERE event_date >= DATE '{since}'"
    ).fetchall()[0][1]

    # The compacted scan opens the files of the two newest event dates and the rejects' day
    # (which the filter then drops), of all the compacted files.
    scanned = [tuple(map(int, m)) for m in re.findall(r"Scanning Files: (\d+)/(\d+)", plan)]
    total = len(read_manifest(store.root).of("ingested").files)
    assert (3, total) in scanned and total == DAYS + 1
    assert con.execute(
        f"SELECT count(*) FROM events WHERE event_date >= DATE '{since}'"
    ).fetchone() == (20,)


def test_watermarks_come_from_the_manifest_and_the_uncovered_files(store: EventStore) -> None:
    offset = write_days(store, 0)
    ids = store.stored_event_ids("t", [0, 1])
    compact(store, min_age_s=0)
    purge(store, retention_s=0)
    after = store.stored_event_ids("t", [0, 1])
    assert all((after[p] == ids[p]).all() and len(ids[p]) == 25 for p in (0, 1))
    # The compacted files are not read for it: unreadable, the lookup still answers.
    for path in compacted_dir(store.root).glob("ingested/event_date=*/*.parquet"):
        path.write_bytes(b"not parquet")
    assert store.stored_watermarks("t", [0, 1, 2]) == {0: 54, 1: 53, 2: -1}
    batch = LedgerBatch()
    batch.add_rejected(b"x", "r", SourceRecord("t", 1, offset + 7, b"u", NOW))
    store.write_batch(batch, "w")
    assert store.stored_watermarks("t", [0, 1]) == {0: 54, 1: offset + 7}


def test_a_follower_gets_every_row_once_across_compactions(store: EventStore) -> None:
    follower = LedgerFollower(store)
    offset = write_days(store, 0)
    first = follower.poll()
    assert first.from_scratch and len(first.files) == DAYS + 1  # and the seed
    compact(store, min_age_s=0)
    offset = write_days(store, offset, days=1)
    second = follower.poll()
    assert not second.from_scratch and len(second.files) == 1  # the new file alone
    purge(store, retention_s=0)
    assert follower.poll().files == ()

    # A follower that never read a file before it was merged and deleted starts over.
    write_days(store, offset, days=1)
    compact(store, min_age_s=0)
    purge(store, retention_s=0)
    again = follower.poll()
    assert again.from_scratch and again.files == store.current_ledger().files


def test_the_derive_worker_derives_the_same_lists_across_compaction(store: EventStore) -> None:
    worker = DeriveWorker(store, DeriveConfig(prompt_length=5, seed=3))
    offset = write_ratings(store, range(20), seed=1, first_offset=0)
    worker.poll()
    compact(store, min_age_s=0)
    assert worker.poll().files == 0  # a poll within the retention: nothing new
    purge(store, retention_s=0)
    write_ratings(store, range(15, 30), seed=2, first_offset=offset)
    assert worker.poll().files == 1
    worker.refresh()

    fresh = DeriveWorker(store, DeriveConfig(prompt_length=5, seed=3))
    fresh.poll()
    assert {u: (s.prompt.items, s.golden.items) for u, s in worker.state.users.items()} == {
        u: (s.prompt.items, s.golden.items) for u, s in fresh.state.users.items()
    }


def test_a_snapshot_keeps_its_id_and_data_through_compaction(store: EventStore) -> None:
    offset = write_ratings(store, range(20), seed=1, first_offset=0)
    manifest = create_snapshot(store)
    _, before = load_snapshot(store, manifest.snapshot_id)
    write_ratings(store, range(10, 30), seed=2, first_offset=offset)
    compact(store, min_age_s=0)
    purge(store, retention_s=0)

    _, after = load_snapshot(store, manifest.snapshot_id)

    assert after == before
    assert create_snapshot(store).snapshot_id != manifest.snapshot_id  # more data, another id
    compact(store, min_age_s=0)
    assert create_snapshot(store).snapshot_id == create_snapshot(store).snapshot_id


def test_the_compact_command_rewrites_the_catalog_for_the_duckdb_cli(store: EventStore) -> None:
    write_days(store, 0)
    write_catalog(store)
    flags = ("--store", str(store.root), "--min-age", "0", "--retention", "0")

    # Two files a round: a backlog of five takes three, all in one command.
    done = pagellm("store", "compact", *flags, env={"PAGELLM_COMPACT_MAX_FILES": "2"})

    assert done.returncode == 0, done.stderr.decode()[-2000:]
    rounds = re.findall(rb"compaction version (\d): (\d) fresh", done.stderr)
    assert rounds == [(b"1", b"2"), (b"2", b"2"), (b"3", b"1")], done.stderr
    assert done.stderr.count(b"more fresh files wait") == 2
    # The five small files, and the rejects' day merged twice into a larger file.
    assert b"7 merged files deleted" in done.stderr
    with duckdb.connect(str(store.root / CATALOG_FILE), read_only=True) as con:
        assert counts(con) == (55, 50, 50, 5)
        write_days(store, 55, days=1)  # new fresh files still show at once
        assert counts(con) == (66, 60, 60, 6)
    missing = pagellm("store", "compact", "--store", str(store.root / "nope"))
    assert missing.returncode == 2 and b"no event store" in missing.stderr


def test_the_derived_datasets_are_compacted_and_their_views_unchanged(store: EventStore) -> None:
    worker = DeriveWorker(store, DeriveConfig(prompt_length=5, seed=3))
    offset = 0
    for seed in range(4):  # four polls, each writing a file per derived dataset
        offset = write_ratings(
            store, range(seed * 5, seed * 5 + 10), seed=seed, first_offset=offset
        )
        worker.poll()
    views = ("golden_lists", "preference_pairs", "pair_skips", "item_stats")

    def rows() -> dict[str, list]:
        con = connect_store(store.root)
        return {v: sorted(map(str, con.execute(f"SELECT * FROM {v}").fetchall())) for v in views}

    before = rows()
    assert store.datasets() == [
        "ingested",
        "derived/golden_lists",
        "derived/item_stats",
        "derived/pair_skips",
        "derived/preference_pairs",
    ]
    compact(store, min_age_s=0)
    purge(store, retention_s=0)

    manifest = read_manifest(store.root)
    for dataset in store.datasets()[1:]:
        assert len(manifest.of(dataset).files) == 1  # one write date
        assert store.fresh_files(dataset) == [str(store.seed_path(dataset).relative_to(store.root))]
    assert rows() == before


def test_a_view_registered_over_a_glob_keeps_its_dataset_out_of_compaction(
    store: EventStore,
) -> None:
    store.init_dataset("legacy", pa.table({"x": pa.array([], pa.int64())}))
    store.write_table("legacy", pa.table({"x": [1, 2]}), "w")
    store.register_views({"legacy_rows": "SELECT * FROM read_parquet({dataset:legacy})"})
    assert store.datasets() == ["ingested"]
    compact(store, min_age_s=0)
    purge(store, retention_s=0)
    assert connect_store(store.root).execute("SELECT sum(x) FROM legacy_rows").fetchone() == (3,)


def test_the_fresh_horizon_is_a_minute_ago_or_the_last_covered_file() -> None:
    pinned = PinnedFiles(0, (), (), frozenset(), {})
    noon = int(datetime(2026, 12, 2, 12, tzinfo=UTC).timestamp()) * 10**9
    a_minute_before = f"ingested/date=2026-12-02/{noon - 60 * 10**9:020d}"
    assert fresh_horizon("ingested", pinned, noon) == a_minute_before
    covered = "ingested/date=2026-12-02/" + f"{noon - 10**9:020d}-w-1.parquet"
    later = PinnedFiles(1, (), (), frozenset({covered}), {})
    assert fresh_horizon("ingested", later, noon) == covered


def test_the_status_counts_waiting_compacted_and_deletable_files(store: EventStore) -> None:
    assert compaction_status(store).waiting_files == 0
    write_days(store, 0)
    waiting = compaction_status(store)
    assert (waiting.version, waiting.compacted_at, waiting.waiting_files) == (0, None, DAYS)
    assert waiting.oldest_waiting_s is not None and 0 <= waiting.oldest_waiting_s < 60
    compact(store, min_age_s=0)
    done = compaction_status(store)
    assert (done.version, done.waiting_files, done.awaiting_deletion) == (1, 0, DAYS)
    assert done.compacted_files == DAYS + 1 and done.compacted_at is not None
    purge(store, retention_s=0)
    assert compaction_status(store).awaiting_deletion == 0


def test_a_view_names_the_files_before_its_horizon_and_globs_the_later_ones(
    store: EventStore,
) -> None:
    write_days(store, 0, days=2)
    # Renamed as if published two minutes ago: older than any new view's horizon.
    for name in store.ledger_files()[1:]:
        path = store.root / name
        ns = int(path.name.split("-", 1)[0]) - 120 * 10**9
        path.rename(path.with_name(f"{ns:020d}-{path.name.split('-', 1)[1]}"))
    con = connect_store(store.root)
    assert counts(con) == (22, 20, 20, 2)
    write_days(store, 22, days=1)  # after the horizon: found by the glob at the next query
    assert counts(con) == (33, 30, 30, 3)
    view = con.execute("SELECT sql FROM duckdb_views() WHERE view_name = 'ingested'").fetchone()
    named = [n for n in store.ledger_files() if str(store.root / n) in view[0]]
    assert len(named) == 3  # the seed and the two old files, not the new one
