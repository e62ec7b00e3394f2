"""One user's effective ratings, kept in the orders that prompts, lists and negatives read.

Sorting a user's whole history again on each of their events made derivation slow down as
history grew (bench-derive: 29 us per event at 10% of MovieLens, 284 us at 100%). Here each
order is a sorted Python list updated by bisection when one rating changes: O(log H) to find,
a memmove of pointers to insert, so the work per event no longer grows with the history H.

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

import bisect
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime

from schemas.training_data import EffectiveRating
from streams.derive.feedback_ratings import is_non_preferred, is_positive

ChronoKey = tuple[datetime, str]
RankKey = tuple[int, float, str]
DislikeKey = tuple[int, float, str]


def chrono_key(r: EffectiveRating) -> ChronoKey:
    """(ts, item id): oldest first."""
    return (r.ts, r.item_id)


def rank_key(r: EffectiveRating, popularity: float) -> RankKey:
    """(-rating, -s_i, item id): best first."""
    return (-r.rating, -popularity, r.item_id)


def dislike_key(r: EffectiveRating) -> DislikeKey:
    """(rating, -time, item id): lowest rating first, then most recent."""
    return (r.rating, -r.ts.timestamp(), r.item_id)


def _insert(keys: list, key: object) -> None:  # type: ignore[type-arg]
    bisect.insort(keys, key)


def _remove(keys: list, key: object) -> None:  # type: ignore[type-arg]
    del keys[bisect.bisect_left(keys, key)]


@dataclass
class SortedRatings:
    user_id: str
    ratings: dict[str, EffectiveRating] = field(default_factory=dict)
    chronological: list[ChronoKey] = field(default_factory=list)
    ranked: list[RankKey] = field(default_factory=list)
    disliked: list[DislikeKey] = field(default_factory=list)
    rated_per_category: Counter[str] = field(default_factory=Counter)
    popularity_used: dict[str, float] = field(default_factory=dict)  # positive -> s_i in ranked

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
        out.chronological = sorted(chrono_key(r) for r in positives)
        out.ranked = sorted(rank_key(r, out.popularity_used[r.item_id]) for r in positives)
        disliked = [r for r in ratings.values() if is_non_preferred(r.rating)]
        out.disliked = sorted(dislike_key(r) for r in disliked)
        out.rated_per_category = Counter(category.get(i, "") for i in ratings)
        return out

    def __len__(self) -> int:
        return len(self.ratings)

    def __contains__(self, item: object) -> bool:
        return item in self.ratings

    def set(self, item: str, new: EffectiveRating | None, popularity: float, category: str) -> None:
        """Replace ``item``'s rating by ``new`` (None: unrated), its s_i being ``popularity``."""
        old = self.ratings.pop(item, None)
        if old is not None:
            self.rated_per_category[category] -= 1
            if is_positive(old.rating):
                _remove(self.chronological, chrono_key(old))
                _remove(self.ranked, rank_key(old, self.popularity_used.pop(item)))
            elif is_non_preferred(old.rating):
                _remove(self.disliked, dislike_key(old))
        if new is None:
            return
        self.ratings[item] = new
        self.rated_per_category[category] += 1
        if is_positive(new.rating):
            self.popularity_used[item] = popularity
            _insert(self.chronological, chrono_key(new))
            _insert(self.ranked, rank_key(new, popularity))
        elif is_non_preferred(new.rating):
            _insert(self.disliked, dislike_key(new))
