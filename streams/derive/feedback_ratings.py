"""From feedback events to one effective rating per (user, item).

Explicit ratings stand: a user's latest rating of an item is its rating, whatever they did
with it otherwise. Without one, implicit signals map to a rating by ``RatingRule`` and the
strongest signal wins (a purchase outranks a click, a click outranks a skip). A *skip* is an
impressed item the user passed over: it sat above a clicked item of the same page (the user
looked at it on the way down) and was not clicked itself.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

from schemas import Click, Impression, Purchase, Rating
from schemas.training_data import EffectiveRating

Event = Impression | Click | Purchase | Rating

POSITIVE_ABOVE = 3  # r > 3 is a positive (the paper's binarisation)
NEGATIVE_BELOW = 3  # r < 3 is non-preferred


class RatingRule(BaseModel):
    """Effective ratings of implicit signals (defaults from the issue)."""

    model_config = ConfigDict(frozen=True)

    purchase: int = Field(5, ge=1, le=5)
    click: int = Field(4, ge=1, le=5)
    skipped: int = Field(2, ge=1, le=5)


def is_positive(rating: int) -> bool:
    """A positive is r > 3."""
    return rating > POSITIVE_ABOVE


def is_non_preferred(rating: int) -> bool:
    """A non-preferred item is r < 3."""
    return rating < NEGATIVE_BELOW


def skipped_items(impression: Impression, clicked_positions: set[int]) -> list[tuple[str, int]]:
    """(item, position) of the page's items above the lowest click that were not clicked."""
    if not clicked_positions:
        return []
    lowest = max(clicked_positions)
    return [
        (slot.item_id, slot.position)
        for slot in impression.items
        if slot.position < lowest and slot.position not in clicked_positions
    ]


class RatingAccumulator:
    """One user's effective ratings, folded in event by event.

    ``add`` returns the items whose rating may have changed, so that a caller updates only
    those; the work per event is bounded by the page size, not by the user's history.
    """

    def __init__(self, user_id: str, rule: RatingRule | None = None) -> None:
        self.user_id = user_id
        self.rule = rule or RatingRule()
        self._explicit: dict[str, tuple[datetime, int]] = {}
        self._implicit: dict[str, tuple[int, datetime]] = {}
        self._pages: dict[str, Impression] = {}
        self._clicks: dict[str, set[int]] = {}

    def _signal(self, item: str, rating: int, ts: datetime) -> None:
        # The strongest signal wins; among equals, the first one dates it.
        best = self._implicit.get(item)
        if best is None or rating > best[0] or (rating == best[0] and ts < best[1]):
            self._implicit[item] = (rating, ts)

    def _skips(self, request_id: str) -> set[str]:
        page = self._pages.get(request_id)
        if page is None:
            return set()  # the click's impression is unknown (yet): no skips can be inferred
        skipped = skipped_items(page, self._clicks.get(request_id, set()))
        for item, _ in skipped:
            self._signal(item, self.rule.skipped, page.ts)
        return {item for item, _ in skipped}

    def add(self, event: Event) -> set[str]:
        """Fold one event in; returns the items whose effective rating may have changed."""
        match event:
            case Rating():
                latest = self._explicit.get(event.item_id)
                if latest is None or event.ts >= latest[0]:
                    self._explicit[event.item_id] = (event.ts, event.rating)
                return {event.item_id}
            case Purchase():
                self._signal(event.item_id, self.rule.purchase, event.ts)
                return {event.item_id}
            case Click():
                self._signal(event.item_id, self.rule.click, event.ts)
                self._clicks.setdefault(event.request_id, set()).add(event.position)
                return {event.item_id} | self._skips(event.request_id)
            case Impression():
                self._pages[event.request_id] = event
                return self._skips(event.request_id)
        return set()

    def rating(self, item: str) -> EffectiveRating | None:
        """The item's effective rating now: the latest explicit one, else the strongest signal."""
        if item in self._explicit:
            ts, r = self._explicit[item]
            return EffectiveRating(
                user_id=self.user_id, item_id=item, rating=r, ts=ts, explicit=True
            )
        if item in self._implicit:
            r, ts = self._implicit[item]
            return EffectiveRating(
                user_id=self.user_id, item_id=item, rating=r, ts=ts, explicit=False
            )
        return None

    def items(self) -> list[str]:
        """Every item with a rating, by item id: a set's order would change with Python's
        string hashing from one process to the next, and with it the order of every ratings
        dict built from this (training examples among them)."""
        return sorted(self._explicit.keys() | self._implicit.keys())


def effective_ratings(
    events: Iterable[Event], rule: RatingRule | None = None
) -> dict[str, EffectiveRating]:
    """Item id -> effective rating, from all the events of one user (in stream order)."""
    events = list(events)
    accumulator = RatingAccumulator(events[0].user_id if events else "", rule)
    for event in events:
        accumulator.add(event)
    return {item: r for item in accumulator.items() if (r := accumulator.rating(item))}
