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


def effective_ratings(
    events: Iterable[Event], rule: RatingRule | None = None
) -> dict[str, EffectiveRating]:
    """Item id -> effective rating, from all the events of one user (in stream order)."""
    rule = rule or RatingRule()
    events = list(events)
    explicit: dict[str, tuple[datetime, int]] = {}
    implicit: dict[str, tuple[int, datetime]] = {}

    def signal(item: str, rating: int, ts: datetime) -> None:
        # The strongest signal wins; among equals, the first one dates it.
        best = implicit.get(item)
        if best is None or rating > best[0] or (rating == best[0] and ts < best[1]):
            implicit[item] = (rating, ts)

    pages: dict[str, Impression] = {}
    clicks: dict[str, set[int]] = {}
    for event in events:
        match event:
            case Rating():
                latest = explicit.get(event.item_id)
                if latest is None or event.ts >= latest[0]:
                    explicit[event.item_id] = (event.ts, event.rating)
            case Purchase():
                signal(event.item_id, rule.purchase, event.ts)
            case Click():
                signal(event.item_id, rule.click, event.ts)
                clicks.setdefault(event.request_id, set()).add(event.position)
            case Impression():
                pages[event.request_id] = event
    for request_id, positions in clicks.items():
        page = pages.get(request_id)
        if page is None:
            continue  # the click's impression is unknown: no skips can be inferred
        for item, _ in skipped_items(page, positions):
            signal(item, rule.skipped, page.ts)

    user = events[0].user_id if events else ""
    out = {
        item: EffectiveRating(user_id=user, item_id=item, rating=r, ts=ts, explicit=False)
        for item, (r, ts) in implicit.items()
    }
    for item, (ts, r) in explicit.items():
        out[item] = EffectiveRating(user_id=user, item_id=item, rating=r, ts=ts, explicit=True)
    return out
