"""The paper's per-user chronological split (section 5.1.1), as a pure function.

Per user, the positives (r > 3) are ordered by (timestamp, item id). The last 10% (at least
one, rounded half up) are the test part, the 10% before them (same rule) the validation part.
The first validation positive is the user's boundary: the training part is everything the user
rated before it (in the same order), positives and not. What they rated after it is unknown at
the boundary, so a rating of 3 or less made later enters neither training nor, through it, the
candidate exclusion of evaluation (which drops the training items). Users with fewer than 3
positives are left out.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from schemas.training_data import EffectiveRating
from streams.derive.golden_list import chronological_positives

MIN_POSITIVES = 3


def held_out_count(positives: int) -> int:
    """max(1, round_half_up(positives / 10)), in integers: max(1, (n + 5) // 10)."""
    return max(1, (positives + 5) // 10)


@dataclass(frozen=True)
class UserSplit:
    train: dict[str, EffectiveRating]
    validation: tuple[str, ...]
    test: tuple[str, ...]


def split_user(ratings: Mapping[str, EffectiveRating]) -> UserSplit | None:
    """Train ratings and held-out validation/test positives; None below 3 positives."""
    positives = chronological_positives(ratings)
    if len(positives) < MIN_POSITIVES:
        return None
    n_test = held_out_count(len(positives))
    n_val = held_out_count(len(positives))
    test = positives[len(positives) - n_test :]
    validation = positives[len(positives) - n_test - n_val : len(positives) - n_test]
    boundary = (validation[0].ts, validation[0].item_id)
    return UserSplit(
        train={item: r for item, r in ratings.items() if (r.ts, r.item_id) < boundary},
        validation=tuple(r.item_id for r in validation),
        test=tuple(r.item_id for r in test),
    )
