"""The metrics SQL against a hand-counted toy event store (real Parquet files, real DuckDB)."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb
import pytest

from abtest.experiment import Experiment
from abtest.metrics import METRICS, MetricName
from abtest.metrics_sql import query_variant_data
from abtest.registry import ExperimentRegistry
from abtest.report import build_report
from abtest.settings import AbSettings
from schemas import Click, Impression, PageSlot, Purchase
from streams.store.event_store import EventStore
from streams.store.ledger_schema import LedgerBatch, SourceRecord
from streams.store.sql_literals import sql_literal
from streams.store.store_views import connect_store
from tests.ab_simulation import two_variant_experiment

T0 = datetime(2026, 10, 1, tzinfo=UTC)
H = timedelta(hours=1)
D = timedelta(days=1)
_ids = itertools.count()


def impression(user: str, session: str, ts: datetime, variant: str | None, exp: str = "exp"):
    return Impression(
        type="impression", event_id=f"e{next(_ids)}", user_id=user, session_id=session, ts=ts,
        request_id=f"r{next(_ids)}", items=[PageSlot(item_id="i1", position=1)],
        model_version="v1", experiment=exp if variant else None, variant=variant,
    )  # fmt: skip


def click(user: str, session: str, ts: datetime) -> Click:
    return Click(
        type="click", event_id=f"e{next(_ids)}", user_id=user, session_id=session, ts=ts,
        request_id="r", item_id="i1", position=1,
    )  # fmt: skip


def purchase(user: str, session: str, ts: datetime, quantity: int, price: str) -> Purchase:
    return Purchase.model_validate(
        {"type": "purchase", "event_id": f"e{next(_ids)}", "user_id": user, "session_id": session,
         "ts": ts, "item_id": "i1", "quantity": quantity, "unit_price": price, "currency": "EUR"}
    )  # fmt: skip


TOY_EVENTS = [
    # u1, control: a pre-period session with a click and a purchase of 10...
    impression("u1", "s0", T0 - 3 * D, None),
    click("u1", "s0", T0 - 3 * D + H),
    purchase("u1", "s0", T0 - 3 * D + H, 1, "10"),
    # ...exposed at T0+1h with a click; a second session fails to click but buys 2 x 5...
    impression("u1", "s1", T0 + H, "control"),
    click("u1", "s1", T0 + 2 * H),
    impression("u1", "s2", T0 + 3 * H, "control"),
    purchase("u1", "s2", T0 + 4 * H, 2, "5"),
    # ...and a purchase after the end, which does not count.
    purchase("u1", "s9", T0 + 8 * D, 1, "100"),
    # u2, treatment: a purchase before exposure (not counted), then a session with two clicks.
    purchase("u2", "s3", T0 + 0.5 * H, 1, "50"),
    impression("u2", "s3", T0 + H, "treatment"),
    click("u2", "s3", T0 + 2 * H),
    click("u2", "s3", T0 + 2 * H),
    # u5, treatment: a purchase before the pre-period (not counted), one failed session.
    purchase("u5", "s5", T0 - 20 * D, 1, "7"),
    impression("u5", "s6", T0 + D, "treatment"),
    # u3 was logged in both variants: left out. u4 is in another experiment. u6: a typo variant.
    impression("u3", "s7", T0 + H, "control"),
    impression("u3", "s7", T0 + 2 * H, "treatment"),
    impression("u4", "s8", T0 + H, "treatment", exp="other"),
    impression("u6", "s10", T0 + H, "treatmnet"),
    # An exposure after the end does not count either.
    impression("u7", "s11", T0 + 9 * D, "control"),
]


def write_toy_store(root: Path) -> EventStore:
    store = EventStore(root)
    store.init()
    batch = LedgerBatch()
    for offset, event in enumerate(TOY_EVENTS):
        batch.add_accepted(event, SourceRecord("t", 0, offset, event.user_id.encode(), T0))
    store.write_batch(batch, "w1")
    return store


@pytest.fixture
def toy_store(tmp_path) -> EventStore:
    return write_toy_store(tmp_path / "store")


def toy_experiment() -> Experiment:
    return two_variant_experiment("exp", T0, end=T0 + 7 * D, pre_period_days=14)


def test_variant_totals_match_the_hand_count(toy_store: EventStore) -> None:
    data = query_variant_data(connect_store(toy_store.root), toy_experiment(), now=T0 + 30 * D)
    assert data.ambiguous_users == 1
    assert data.unknown_variants == {"treatmnet": 1}
    control, treatment = data.phases[0]["control"], data.phases[0]["treatment"]
    assert control["n"] == 1
    assert {c: control[f"sum_{c}"] for c in ("gmv", "purchases", "clicks", "impressions")} == {
        "gmv": 10, "purchases": 1, "clicks": 1, "impressions": 2,
    }  # fmt: skip
    assert (control["sum_sessions"], control["sum_failed_sessions"]) == (2, 1)
    assert control["sum_purchase_sessions"] == 1
    assert (control["sum_pre_gmv"], control["sum_pre_clicks"], control["sum_pre_sessions"]) == (
        10, 1, 1,
    )  # fmt: skip
    assert control["sum_pre_failed_sessions"] == 0
    assert treatment["n"] == 2
    assert (treatment["sum_gmv"], treatment["sum_clicks"], treatment["sum_impressions"]) == (
        0, 2, 2,
    )  # fmt: skip
    assert (treatment["sum_sessions"], treatment["sum_failed_sessions"]) == (2, 1)
    assert treatment["sum_pre_gmv"] == 0  # u5's purchase lies before the pre-period
    moments = data.moments("treatment", METRICS[MetricName.CTR], phase=0)
    # per user (clicks, impressions): u2 (2, 1), u5 (0, 1)
    assert moments.cross[0, 0] == 4 and moments.cross[0, 1] == 2 and moments.cross[1, 1] == 2


def test_the_window_ends_now_while_the_experiment_runs(toy_store: EventStore) -> None:
    running = toy_experiment().model_copy(update={"end": None})
    data = query_variant_data(connect_store(toy_store.root), running, now=T0 + 2 * H)
    # At T0+2h only u1's first exposure and u2's exposure have happened (u3 still one variant).
    assert data.users("control") == 2 and data.users("treatment") == 1
    assert data.phases[0]["control"]["sum_clicks"] == 0  # u1's click at T0+2h is not before now


def test_a_store_whose_path_holds_a_quote_reports_under_a_memory_limit(tmp_path) -> None:
    # Paths reach DuckDB quoted (views take no parameters), the memory limit as a parameter.
    store = write_toy_store(tmp_path / "shop's 'store'")
    ExperimentRegistry(store.root).create(toy_experiment())
    capped = AbSettings(memory_limit="500MB")
    report = build_report(store.root, "exp", now=T0 + 30 * D, settings=capped)
    assert report.users == {"control": 1, "treatment": 2}
    assert store.stored_watermarks("t", [0, 1]) == {0: len(TOY_EVENTS) - 1, 1: -1}
    assert duckdb.sql(f"SELECT {sql_literal(store.root)}").fetchall() == [(str(store.root),)]
    with pytest.raises(duckdb.Error, match="memory"):
        # past the settings' own check (model_construct), the query parameter still refuses it
        injected = AbSettings.model_construct(memory_limit="500MB'; DROP VIEW x; '")
        build_report(store.root, "exp", now=T0 + 30 * D, settings=injected)
    # Each report is a look; the failed one above was not recorded.
    assert (report.looks, build_report(store.root, "exp", now=T0 + 30 * D).looks) == (1, 2)
