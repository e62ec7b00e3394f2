"""The derive worker on real store files: live views equal a full rebuild, touched users only."""

from __future__ import annotations

from deploy.platform_status import derive_status
from streams.derive.derive_worker import WORKERS_DIR, DeriveWorker
from streams.derive.derived_state import DeriveConfig, DerivedState
from streams.derive.snapshot_store import read_stream
from streams.store.event_store import EventStore
from streams.store.store_views import connect_store
from tests.test_snapshots import write_ratings

CONFIG = DeriveConfig(prompt_length=5, seed=3)


def view_lists(store: EventStore) -> dict[str, tuple]:
    con = connect_store(store.root)
    rows = con.execute("SELECT user_id, prompt, items FROM golden_lists").fetchall()
    return {u: (tuple(p), tuple(i)) for u, p, i in rows}


def rebuilt_lists(store: EventStore) -> dict[str, tuple]:
    files = tuple(store.ledger_files())
    events, catalogue, _ = read_stream(store, files)
    state = DerivedState.rebuild(catalogue, CONFIG, events)
    return {u: (d.prompt.items, d.golden.items) for u, d in state.users.items()}


def test_live_views_equal_a_full_rebuild_after_refresh(store: EventStore) -> None:
    worker = DeriveWorker(store, CONFIG)
    offset = write_ratings(store, range(20), seed=1, first_offset=0)
    first = worker.poll()
    assert (first.files, first.users) == (2, 20)  # the seed file and one batch
    write_ratings(store, range(15, 30), seed=2, first_offset=offset)
    second = worker.poll()
    assert (second.files, second.users) == (1, 15)  # only the users of the new file
    assert worker.poll().files == 0
    worker.refresh()
    assert view_lists(store) == rebuilt_lists(store)

    con = connect_store(store.root)
    families = dict(
        con.execute("SELECT family, count(*) FROM preference_pairs GROUP BY 1").fetchall()
    )
    assert set(families) == {"np", "rk", "d", "rd"}
    ratings, mean, price = con.execute(
        "SELECT ratings, mean_rating, price FROM item_stats WHERE item_id = 'i7'"
    ).fetchone()
    assert price == 7
    assert ratings == worker.state.items["i7"].count
    assert mean == worker.state.items["i7"].mean
    assert con.execute("SELECT count(DISTINCT user_id) FROM golden_lists").fetchone() == (30,)


def test_a_restarted_worker_rebuilds_the_same_views(store: EventStore) -> None:
    first = DeriveWorker(store, CONFIG)
    write_ratings(store, range(10), seed=5, first_offset=0)
    first.poll()
    first.refresh()
    before = view_lists(store)
    again = DeriveWorker(store, CONFIG)
    assert again.poll().users == 10
    assert view_lists(store) == before


def test_the_heartbeat_says_how_far_the_worker_has_folded(store: EventStore) -> None:
    worker = DeriveWorker(store, CONFIG)
    write_ratings(store, range(5), seed=7, first_offset=0)
    report = worker.poll()
    worker.write_heartbeat(report)
    worker.write_heartbeat(report)  # replaced in place, nothing left beside it
    status = derive_status(store)
    assert status is not None and status.alive
    assert status.files_folded == status.ledger_files == 2
    assert sorted(p.name for p in (store.root / WORKERS_DIR).iterdir()) == ["derive.json"]
