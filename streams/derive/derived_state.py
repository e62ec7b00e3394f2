"""Training data maintained incrementally as events arrive.

An event rebuilds only what it touches: its user's effective ratings (kept sorted, see
``sorted_ratings``), prompt and golden list, the pairs those changed, and the stats of the
items whose rating by that user changed. The work per event is bounded by the page size and
the list length, not by the user's history nor by the total.

Which pairs a batch can change: while the golden list (and the catalogue) stays as it was, rk
and rd, functions of the golden list alone, stay too; d stays while the user's rated items of
the list's dominant category are the same, and a d drawn at random also while none of the
items it drew became rated and it would still draw at random (a draw at random reads only the
items it drew, see ``sample_unseen``); np, a slice of the disliked items, stays while that
slice does. An unchanged prompt or list keeps its model. A long history makes an unchanged
list likelier, so later events of a user cost less.

Staleness bound: a user's golden list breaks rating ties by the popularity s_i each candidate
had when the user's rating of it last changed (or at the user's last refresh), and caps
categories as the catalogue stood then. Events of other users move s_i without touching this
user's list, so only the order among equally rated candidates (and which of them the category
cap keeps) can be stale; a catalogue update makes every earlier list stale.
``refresh()`` rebuilds the lists of every stale user; after it the state equals
``rebuild(...)`` from the same events (tested).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal

from pydantic import BaseModel, ConfigDict, Field

from schemas import CatalogueItem, Click, Impression, Purchase, Rating
from schemas.training_data import (
    PAIR_FAMILIES,
    GoldenList,
    PairFamily,
    PreferencePair,
    UserPrompt,
)
from streams.derive.feedback_ratings import RatingAccumulator, RatingRule, is_positive
from streams.derive.golden_list import (
    DEFAULT_CATEGORY_CAP,
    DEFAULT_LIST_LENGTH,
    DEFAULT_PROMPT_LENGTH,
    prompt_and_golden_items,
)
from streams.derive.preference_pairs import (
    build_pairs,
    dominant_category,
    draws_at_random,
    preference_negative,
)
from streams.derive.sorted_ratings import SortedRatings

Event = Impression | Click | Purchase | Rating


class DeriveConfig(BaseModel):
    """How training data is derived (paper defaults); part of a snapshot's identity."""

    model_config = ConfigDict(frozen=True)

    prompt_length: int = Field(DEFAULT_PROMPT_LENGTH, ge=0)
    list_length: int = Field(DEFAULT_LIST_LENGTH, ge=1)
    category_cap: float = Field(DEFAULT_CATEGORY_CAP, gt=0, le=1)
    rule: RatingRule = Field(default_factory=RatingRule)
    seed: int = 0


@dataclass
class ItemStats:
    """Running count and sum of an item's effective ratings; s_i is their mean."""

    count: int = 0
    rating_sum: int = 0

    @property
    def mean(self) -> float:
        """s_i = rating_sum / count (0 for an item nobody rated)."""
        return self.rating_sum / self.count if self.count else 0.0


@dataclass
class UserData:
    accumulator: RatingAccumulator
    history: SortedRatings  # the effective ratings, in the orders the lists read
    prompt: UserPrompt | None = None
    golden: GoldenList | None = None
    pairs: list[PreferencePair] = field(default_factory=list)
    skipped: dict[PairFamily, str] = field(default_factory=dict)
    catalogue_version: int = 0  # the catalogue the lists were built with
    # The catalogue the per-category counts were made with: a category change moves the count
    # of every item that had it, rated by users an event may not touch before a refresh.
    counted_version: int = 0


class DerivedState:
    """Users' training data and items' stats, updated per event batch."""

    def __init__(self, catalogue: Mapping[str, CatalogueItem], config: DeriveConfig) -> None:
        self.config = config
        self.category: dict[str, str] = {}
        self.price: dict[str, Decimal | None] = {}
        self.items_by_category: dict[str, list[str]] = {}
        self.catalogue_version = 0
        self.items: dict[str, ItemStats] = {}
        self.users: dict[str, UserData] = {}
        self.update_catalogue(catalogue)

    def update_catalogue(self, catalogue: Mapping[str, CatalogueItem]) -> None:
        """Take new or changed items; a category change makes every earlier list stale."""
        self.price.update({i: item.price for i, item in catalogue.items()})
        changed = {
            i: item.category
            for i, item in catalogue.items()
            if self.category.get(i) != item.category
        }
        if not changed:
            return
        self.category.update(changed)
        self.items_by_category = {}
        for item_id in sorted(self.category):
            self.items_by_category.setdefault(self.category[item_id], []).append(item_id)
        self.catalogue_version += 1

    def _user(self, user_id: str) -> UserData:
        if user_id not in self.users:
            accumulator = RatingAccumulator(user_id, self.config.rule)
            self.users[user_id] = UserData(
                accumulator, SortedRatings(user_id), counted_version=self.catalogue_version
            )
        return self.users[user_id]

    def _fold(self, data: UserData, events: Iterable[Event]) -> set[str]:
        """Fold a user's new events in; update only the ratings (and item stats) that moved.
        Returns the items that became rated (or unrated)."""
        seen_changed: set[str] = set()
        changed: set[str] = set()
        for event in events:
            changed |= data.accumulator.add(event)
        for item in changed:
            old, new = data.history.ratings.get(item), data.accumulator.rating(item)
            if old == new:
                continue
            if (old is None) != (new is None):
                seen_changed.add(item)
            if old is not None:
                stats = self.items[item]
                stats.count -= 1
                stats.rating_sum -= old.rating
            if new is not None:
                stats = self.items.setdefault(item, ItemStats())
                stats.count += 1
                stats.rating_sum += new.rating
            data.history.set(item, new, self.popularity(item), self.category.get(item, ""))
        return seen_changed

    def apply(self, events: Iterable[Event]) -> set[str]:
        """Fold a batch of events in (stream order); returns the users it touched."""
        touched: dict[str, list[Event]] = {}
        for event in events:
            touched.setdefault(event.user_id, []).append(event)
        for user_id, new in touched.items():
            data = self._user(user_id)
            self._build_lists(data, seen_changed=self._fold(data, new))
        return set(touched)

    def popularity(self, item: str) -> float:
        stats = self.items.get(item)
        return stats.mean if stats else 0.0

    def _build_lists(self, data: UserData, seen_changed: set[str] | None = None) -> None:
        """Rebuild the user's prompt and golden list, and the pairs they (or ``seen_changed``,
        the items that became rated or unrated since the last build) can change; None: all."""
        c = self.config
        prompt_items, golden_items, relaxed = prompt_and_golden_items(
            data.history,
            self.category,
            prompt_length=c.prompt_length,
            list_length=c.list_length,
            category_cap=c.category_cap,
        )
        # An unchanged list keeps its model: no validation, and "unchanged" below is identity.
        user = data.history.user_id
        prompt = data.prompt
        if prompt is None or prompt.items != prompt_items:
            prompt = UserPrompt(user_id=user, items=prompt_items)
        golden = data.golden
        if golden is None or (golden.items, golden.cap_relaxed) != (golden_items, relaxed):
            golden = GoldenList(user_id=user, items=golden_items, cap_relaxed=relaxed)
        kept = self._pairs_still_valid(data, golden, seen_changed)
        pairs, skipped = build_pairs(
            golden,
            data.history,
            self.category,
            self.items_by_category,
            c.seed,
            families=[f for f in PAIR_FAMILIES if f not in kept],
        )
        if kept:  # merged back in family order, as a full build gives them
            pairs += [p for p in data.pairs if p.family in kept]
            skipped |= {f: reason for f, reason in data.skipped.items() if f in kept}
            pairs.sort(key=lambda p: PAIR_FAMILIES.index(p.family))
            skipped = {f: skipped[f] for f in PAIR_FAMILIES if f in skipped}
        data.pairs, data.skipped = pairs, skipped
        data.prompt, data.golden = prompt, golden
        data.catalogue_version = self.catalogue_version

    def _pairs_still_valid(
        self, data: UserData, golden: GoldenList, seen_changed: set[str] | None
    ) -> set[PairFamily]:
        """The families whose pair (or skip) built last time is still the one to build."""
        if seen_changed is None or golden is not data.golden:
            return set()
        if data.catalogue_version != self.catalogue_version:
            return set()
        kept: set[PairFamily] = {"rk", "rd"}
        if self._diversity_pair_stands(data, seen_changed):
            kept.add("d")
        if golden.items:  # np is a slice of the disliked items: kept if that slice is
            before = next((p.rejected for p in data.pairs if p.family == "np"), None)
            if preference_negative(golden.items, data.history.disliked) == before:
                kept.add("np")
        return kept

    def _diversity_pair_stands(self, data: UserData, seen_changed: set[str]) -> bool:
        """Whether the d pair (or skip) of the unchanged golden list is still the one to build:
        yes while no item of its dominant category became rated; else, for a pair, while it
        would still be drawn at random and none of the items it drew is among them."""
        golden = data.golden.items if data.golden else ()
        if not golden:
            return True
        dominant = dominant_category(golden, self.category)
        changed = [i for i in seen_changed if self.category.get(i, "") == dominant]
        if not changed:
            return True
        pair = next((p for p in data.pairs if p.family == "d"), None)
        if pair is None or any(i not in data.history for i in changed):
            return False  # a skip, or an item unrated again: rebuilt
        pool = self.items_by_category.get(dominant, ())
        unseen = len(pool) - data.history.rated_per_category.get(dominant, 0)
        drawn = [r for g, r in zip(golden, pair.rejected, strict=True) if g != r]
        return (
            unseen >= len(drawn)
            and draws_at_random(len(pool), unseen)
            and not any(i in seen_changed for i in drawn)
        )

    def _resort(self, user_id: str, data: UserData) -> None:
        """Sort the user's ratings afresh with today's s_i and categories."""
        ratings = data.history.ratings
        popularity = {i: self.popularity(i) for i, r in ratings.items() if is_positive(r.rating)}
        data.history = SortedRatings.build(user_id, ratings, popularity, self.category)
        data.counted_version = self.catalogue_version

    def stale_users(self) -> list[str]:
        """Users whose lists were built with popularity or categories that changed since."""
        return [
            user_id
            for user_id, data in self.users.items()
            if data.catalogue_version != self.catalogue_version
            or data.counted_version != self.catalogue_version
            or any(self.popularity(i) != s for i, s in data.history.popularity_used.items())
        ]

    def refresh(self) -> list[str]:
        """Rebuild the lists of stale users; returns them."""
        stale = self.stale_users()
        for user_id in stale:
            self._resort(user_id, self.users[user_id])
            self._build_lists(self.users[user_id])
        return stale

    @classmethod
    def rebuild(
        cls, catalogue: Mapping[str, CatalogueItem], config: DeriveConfig, events: Iterable[Event]
    ) -> DerivedState:
        """The state computed from scratch: all ratings first, then every list once."""
        state = cls(catalogue, config)
        by_user: dict[str, list[Event]] = {}
        for event in events:
            by_user.setdefault(event.user_id, []).append(event)
        for user_id, user_events in by_user.items():
            state._fold(state._user(user_id), user_events)
        for user_id, data in state.users.items():
            state._resort(user_id, data)
            state._build_lists(data)
        return state
