"""One user's effective ratings, kept in the orders that prompts, lists and negatives read.

Sorting a user's whole history again on each of their events made derivation slow down as
history grew (bench-derive: 29 us per event at 10% of MovieLens, 284 us at 100%). Here each
order is kept sorted and updated by bisection when one rating changes: O(log H) to find, a
memmove to insert, so the work per event no longer grows with the history H.

Each order is a list of item ids with a number per item alongside, in a typed array, that
sorts them (``SortedItems``); items whose numbers are equal are told apart by an exact key.
The bisection then compares machine numbers stored next to each other. With a tuple of Python
objects per key, as before, each comparison followed pointers to objects spread over the whole
heap, and an insertion cost 1.7 us at 10% of MovieLens against 2.5 us at 100%: the heap's
locality growing with the state, not the algorithm's work.

* ``chronological``: the positives by (time, item id): the prompt is its tail;
* ``ranked``: the positives by rating desc, popularity s_i desc, item id: golden-list order.
  An item's s_i is the one it had when its rating last changed (or at the last ``build``):
  other users' ratings move s_i without touching this user (see ``derived_state``);
* ``disliked``: the items rated r < 3 by rating asc, time desc, item id: the preference
  family's order;
* ``rated_per_category``: how many rated items of each category the user has, so that the
  diversity family knows how many unseen items a category holds without listing them.
"""

from __future__ import annotations

from array import array
from bisect import bisect_left, bisect_right
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from schemas.training_data import EffectiveRating
from streams.derive.feedback_ratings import is_non_preferred, is_positive

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
ONE_MICROSECOND = timedelta(microseconds=1)
# s_i is a mean rating; scaled by more than it can reach, the rating stays the first key.
RANK_SCALE = 1024.0
DISLIKE_SCALE = 1 << 60  # above any time in microseconds from 1970 (years 1-9999)

TieKey = Callable[[str], object]


def microseconds(ts: datetime) -> int:
    """ts as whole microseconds since 1970-01-01 UTC (exact: datetimes hold microseconds)."""
    return (ts - EPOCH) // ONE_MICROSECOND


def chrono_number(r: EffectiveRating) -> int:
    """t in microseconds: oldest first (ties: item id)."""
    return microseconds(r.ts)


def rank_number(r: EffectiveRating, popularity: float) -> float:
    """-(rating * RANK_SCALE + s_i): best first, for 0 <= s_i < RANK_SCALE (ties: the exact
    (-rating, -s_i, item id))."""
    if not 0.0 <= popularity < RANK_SCALE:
        raise ValueError(f"popularity s_i must be in [0, {RANK_SCALE:g}), got {popularity!r}")
    return -(r.rating * RANK_SCALE + popularity)


def dislike_number(r: EffectiveRating) -> int:
    """rating * 2^60 - t in microseconds: lowest rating first, then most recent (ties: item id)."""
    return r.rating * DISLIKE_SCALE - microseconds(r.ts)


class SortedItems:
    """Item ids ordered by a number each (held in a typed array), then by a tie key among
    equal numbers. Reads as the sequence of item ids."""

    def __init__(self, typecode: str) -> None:
        self.items: list[str] = []
        self.numbers = array(typecode)

    def _span(self, number: float) -> tuple[int, int]:
        return bisect_left(self.numbers, number), bisect_right(self.numbers, number)

    def insert(self, item: str, number: float, tie_key: TieKey | None = None) -> None:
        """Insert ``item`` in order; ``tie_key`` (the item id when None) orders equal numbers
        and must know ``item`` already. Passed per call: kept here, a key reading its owner
        would tie the two in a reference cycle, which only a full collection frees."""
        lo, hi = self._span(number)
        if tie_key is None:
            at = bisect_left(self.items, item, lo, hi)
        else:
            at = bisect_left(self.items, tie_key(item), lo, hi, key=tie_key)
        self.numbers.insert(at, number)
        self.items.insert(at, item)

    def remove(self, item: str, number: float) -> None:
        """Take out ``item``, held under ``number``."""
        lo, hi = self._span(number)
        at = self.items.index(item, lo, hi)
        del self.numbers[at]
        del self.items[at]

    def fill(self, keyed: list[tuple[float, str]]) -> None:
        """Replace the contents by (number, item) pairs already in order."""
        self.numbers = array(self.numbers.typecode, (n for n, _ in keyed))
        self.items = [item for _, item in keyed]

    def __len__(self) -> int:
        return len(self.items)

    def __iter__(self) -> Iterator[str]:
        return iter(self.items)

    def __getitem__(self, index: slice) -> list[str]:
        return self.items[index]

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SortedItems):
            return NotImplemented
        return self.items == other.items and self.numbers == other.numbers

    def __repr__(self) -> str:
        return f"SortedItems({self.items!r})"


@dataclass
class SortedRatings:
    user_id: str
    ratings: dict[str, EffectiveRating] = field(default_factory=dict)
    chronological: SortedItems = field(default_factory=lambda: SortedItems("q"))
    ranked: SortedItems = field(default_factory=lambda: SortedItems("d"))
    disliked: SortedItems = field(default_factory=lambda: SortedItems("q"))
    rated_per_category: Counter[str] = field(default_factory=Counter)
    popularity_used: dict[str, float] = field(default_factory=dict)  # positive -> s_i in ranked

    def _exact_rank(self, item: str) -> tuple[int, float, str]:
        """(-rating, -s_i, item id): the ranked order where two numbers round alike."""
        return (-self.ratings[item].rating, -self.popularity_used[item], item)

    @classmethod
    def build(
        cls,
        user_id: str,
        ratings: Mapping[str, EffectiveRating],
        popularity: Mapping[str, float],
        category: Mapping[str, str],
    ) -> SortedRatings:
        """From scratch, with the current s_i of every positive."""
        out = cls(user_id, dict(ratings))
        positives = [r for r in ratings.values() if is_positive(r.rating)]
        out.popularity_used = {r.item_id: popularity.get(r.item_id, 0.0) for r in positives}
        out.chronological.fill(sorted((chrono_number(r), r.item_id) for r in positives))
        ranked = sorted(positives, key=lambda r: out._exact_rank(r.item_id))
        out.ranked.fill(
            [(rank_number(r, out.popularity_used[r.item_id]), r.item_id) for r in ranked]
        )
        disliked = [r for r in ratings.values() if is_non_preferred(r.rating)]
        out.disliked.fill(sorted((dislike_number(r), r.item_id) for r in disliked))
        out.rated_per_category = Counter(category.get(i, "") for i in ratings)
        return out

    def __len__(self) -> int:
        return len(self.ratings)

    def __contains__(self, item: object) -> bool:
        return item in self.ratings

    def set(self, item: str, new: EffectiveRating | None, popularity: float, category: str) -> None:
        """Replace ``item``'s rating by ``new`` (None: unrated), its s_i being ``popularity``.
        A refused s_i (ValueError) leaves the ratings as they were."""
        rank = rank_number(new, popularity) if new and is_positive(new.rating) else None
        old = self.ratings.get(item)
        if old is not None:
            self.rated_per_category[category] -= 1
            if is_positive(old.rating):
                self.chronological.remove(item, chrono_number(old))
                self.ranked.remove(item, rank_number(old, self.popularity_used.pop(item)))
            elif is_non_preferred(old.rating):
                self.disliked.remove(item, dislike_number(old))
            del self.ratings[item]
        if new is None:
            return
        self.ratings[item] = new
        self.rated_per_category[category] += 1
        if rank is not None:
            self.popularity_used[item] = popularity
            self.chronological.insert(item, chrono_number(new))
            self.ranked.insert(item, rank, self._exact_rank)
        elif is_non_preferred(new.rating):
            self.disliked.insert(item, dislike_number(new))
