"""Implicit and explicit feedback to effective ratings, on hand-made event sequences."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

from schemas import Click, Impression, PageSlot, Purchase, Rating
from streams.derive.feedback_ratings import RatingRule, effective_ratings, skipped_items

T0 = datetime(2026, 1, 1, tzinfo=UTC)
COMMON = {"user_id": "u1", "session_id": "s1"}


def at(minutes: int) -> datetime:
    return T0 + timedelta(minutes=minutes)


def page(request: str, items: list[str], minute: int = 0) -> Impression:
    return Impression(
        type="impression",
        event_id=f"imp-{request}",
        ts=at(minute),
        request_id=request,
        items=[PageSlot(item_id=i, position=p) for p, i in enumerate(items, start=1)],
        model_version="v1",
        **COMMON,
    )


def click(request: str, item: str, position: int, minute: int) -> Click:
    return Click(
        type="click",
        event_id=f"c-{request}-{item}",
        ts=at(minute),
        request_id=request,
        item_id=item,
        position=position,
        **COMMON,
    )


def rating(item: str, value: int, minute: int) -> Rating:
    return Rating(
        type="rating",
        event_id=f"r-{item}-{minute}",
        ts=at(minute),
        item_id=item,
        rating=value,
        **COMMON,
    )


def test_skips_are_the_unclicked_items_above_the_lowest_click() -> None:
    impression = page("r1", ["a", "b", "c", "d", "e"])
    assert skipped_items(impression, {2, 4}) == [("a", 1), ("c", 3)]
    assert skipped_items(impression, set()) == []


def test_default_rule_purchase_click_skip() -> None:
    events = [
        page("r1", ["a", "b", "c", "d"]),
        click("r1", "c", 3, minute=1),
        Purchase(
            type="purchase",
            event_id="p1",
            ts=at(2),
            item_id="c",
            quantity=1,
            unit_price=5,
            currency="EUR",
            **COMMON,
        ),
    ]
    got = {i: (r.rating, r.explicit) for i, r in effective_ratings(events).items()}
    # c was bought (5); a and b were passed over on the way to c (2); d was never reached.
    assert got == {"c": (5, False), "a": (2, False), "b": (2, False)}


def test_explicit_rating_stands_and_the_latest_wins() -> None:
    events = [
        page("r1", ["a", "b"]),
        click("r1", "b", 2, minute=1),  # a skipped: 2, b clicked: 4
        rating("b", 2, minute=5),
        rating("a", 5, minute=6),
        rating("a", 3, minute=9),
    ]
    got = effective_ratings(events)
    assert (got["b"].rating, got["b"].explicit) == (2, True)
    assert (got["a"].rating, got["a"].ts) == (3, at(9))


def test_the_strongest_implicit_signal_wins_and_is_dated_by_its_first_occurrence() -> None:
    events = [
        page("r1", ["a", "b"], minute=0),
        click("r1", "b", 2, minute=1),  # a skipped at minute 0
        page("r2", ["a"], minute=10),
        click("r2", "a", 1, minute=11),  # a clicked: 4 beats the skip
        page("r3", ["a"], minute=20),
        click("r3", "a", 1, minute=21),
    ]
    got = effective_ratings(events, RatingRule(click=4, skipped=1))
    assert (got["a"].rating, got["a"].ts) == (4, at(11))


def test_a_click_without_its_impression_infers_no_skips() -> None:
    got = effective_ratings([click("unknown", "x", 3, minute=1)])
    assert list(got) == ["x"]


_ORDER_PROBE = """
from tests.test_feedback_ratings import click, page, rating
from streams.derive.feedback_ratings import effective_ratings
items = [f"item{n}" for n in range(30)]
events = [rating(i, 4, n) for n, i in enumerate(items[:15])]
events += [page("r1", items[15:]), click("r1", items[-1], 15, 40)]
print(list(effective_ratings(events)))
"""


def test_the_order_of_ratings_does_not_change_with_the_process() -> None:
    # Training examples are built in this order; Python salts string hashes per process, so
    # an order taken from a set would differ between two runs of the same training.
    runs = {
        subprocess.run(
            [sys.executable, "-c", _ORDER_PROBE],
            env={**os.environ, "PYTHONHASHSEED": seed},
            capture_output=True,
            check=True,
            cwd=Path(__file__).resolve().parent.parent,
        ).stdout
        for seed in ("1", "2", "3")
    }
    assert len(runs) == 1, runs
