"""What serving knows of users and items: folded from events, read from new store files only."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

from schemas import CatalogueItem, Click, Purchase, Rating
from serving.store_context import UNKNOWN_USER, StoreContext, StoreReader
from streams.store.event_store import EventStore
from streams.store.ledger_schema import LedgerBatch, SourceRecord
from tests.test_retrain import T0


def rating(user: str, item: str, stars: int, minute: int) -> Rating:
    return Rating(type="rating", event_id=f"r-{user}-{item}-{minute}", user_id=user,
                  session_id="s", ts=T0 + timedelta(minutes=minute), item_id=item,
                  rating=stars)  # fmt: skip


def test_positives_bought_items_recent_categories_and_popularity() -> None:
    context = StoreContext(recent_events=2)
    catalogue = {f"i{n}": CatalogueItem(item_id=f"i{n}", category=f"c{n % 3}") for n in range(6)}
    purchase = Purchase(type="purchase", event_id="p1", user_id="u", session_id="s",
                        ts=T0 + timedelta(minutes=5), item_id="i4", quantity=1,
                        unit_price=Decimal("2.50"), currency="EUR")  # fmt: skip
    click = Click(type="click", event_id="c1", user_id="v", session_id="s",
                  ts=T0, request_id="r1", item_id="i1", position=1)  # fmt: skip
    context.fold(
        [rating("u", "i0", 5, 1), rating("u", "i1", 2, 2), rating("u", "i2", 4, 3), purchase,
         click],
        catalogue,
    )  # fmt: skip
    user = context.user("u")
    # Positives oldest first: i0 (5), i2 (4), i4 (a purchase counts 5); i1 (2) is not one.
    assert user.positives == ("i0", "i2", "i4")
    assert user.bought == {"i4"}
    # The latest two events: i4 (c1) then i2 (c2), most recent first.
    assert user.recent_categories == ("c1", "c2")
    assert context.user("nobody") == UNKNOWN_USER
    # Positive signals: i0, i2, i4 and v's click on i1 once each; i1's 2 stars do not count.
    assert context.popular_items() == ["i0", "i1", "i2", "i4", "i3", "i5"]
    context.fold([rating("u", "i0", 1, 9)])  # a later rating replaces the earlier one
    assert context.user("u").positives == ("i2", "i4")


def test_a_refresh_reads_only_files_it_has_not_read(store: EventStore) -> None:
    def write(events: list[Rating], first_offset: int) -> None:
        batch = LedgerBatch()
        for n, event in enumerate(events):
            batch.add_accepted(event, SourceRecord("events", 0, first_offset + n, None, None))
        store.write_batch(batch, "w")

    context = StoreContext()
    reader = StoreReader(store.root, context)
    write([rating("u", "i1", 5, 1), rating("u", "i2", 5, 2)], 0)
    assert reader.refresh() == 2
    assert reader.refresh() == 0
    write([rating("u", "i3", 4, 3)], 2)
    assert reader.refresh() == 1
    assert context.user("u").positives == ("i1", "i2", "i3")
