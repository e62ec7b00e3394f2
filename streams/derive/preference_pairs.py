"""The four negative-list families, each paired with the golden list (PageLLM section 4.2).

Each negative breaks exactly one criterion of the golden list, verifiably:

* ``np`` preference: items the user rated r < 3 (basic relevance);
* ``rk`` ranking: the golden list with a few non-overlapping adjacent swaps (same set, order
  broken);
* ``d`` diversity: every item outside the golden list's dominant category replaced by an unseen
  item of that category (one category left);
* ``rd`` redundancy: the same items, regrouped so that same-category items sit together (more
  adjacent same-category pairs than the golden list has).

A user without the material for a family (no r < 3 items, a one-item list, a single category,
an already clustered list, too few items of the dominant category) gets no pair of that family;
the reason is returned so that it can be counted. Nothing is padded with made-up items.
Randomness comes from a generator seeded by (seed, user, family): deterministic for a seed.
"""

from __future__ import annotations

import hashlib
import itertools
import random
from collections import Counter
from collections.abc import Callable, Collection, Mapping, Sequence

from schemas.training_data import PAIR_FAMILIES, GoldenList, PairFamily, PreferencePair
from streams.derive.sorted_ratings import SortedRatings


def family_rng(seed: int, user_id: str, family: str) -> random.Random:
    """A generator whose stream depends only on (seed, user, family)."""
    digest = hashlib.sha256(f"{seed}\x1f{user_id}\x1f{family}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def adjacent_same_category(items: Sequence[str], category: Mapping[str, str]) -> int:
    """Number of neighbouring positions k, k+1 whose items share a category."""
    return sum(category.get(a) == category.get(b) for a, b in itertools.pairwise(items))


def preference_negative(golden: Sequence[str], disliked: Sequence[str]) -> tuple[str, ...] | None:
    """Up to len(golden) items rated r < 3, lowest rating first, then most recent
    (``disliked`` is in that order: ``SortedRatings.disliked``)."""
    if not disliked:
        return None
    return tuple(disliked[: max(1, len(golden))])


def ranking_negative(golden: Sequence[str], rng: random.Random) -> tuple[str, ...] | None:
    """max(1, len // 4) non-overlapping adjacent swaps at random positions."""
    if len(golden) < 2:
        return None
    swaps = max(1, len(golden) // 4)
    free = list(range(len(golden) - 1))
    rng.shuffle(free)
    chosen: list[int] = []
    for k in free:
        if len(chosen) == swaps:
            break
        if all(abs(k - c) > 1 for c in chosen):
            chosen.append(k)
    items = list(golden)
    for k in chosen:
        items[k], items[k + 1] = items[k + 1], items[k]
    return tuple(items)


def draws_at_random(pool_size: int, unseen: int) -> bool:
    """4 * unseen >= pool_size: random draws find an unseen item once in 4 tries or better."""
    return 4 * unseen >= pool_size


def sample_unseen(
    pool: Sequence[str],
    k: int,
    seen: Callable[[str], bool],
    unseen: int,
    rng: random.Random,
) -> list[str] | None:
    """k distinct items of ``pool`` that are not ``seen``, of which there are ``unseen``.

    When at least a quarter of the pool is unseen, random draws find k of them after about
    4k tries, without listing the pool (a category may hold thousands of items); if 64k tries
    do not (a count that promises more than there are), none. Else the unseen items are listed
    and k drawn from them. So a draw at random reads only the items it drew: while none of
    those changes, it draws the same again (``derived_state`` keeps such a pair).
    """
    if unseen < k:
        return None
    if draws_at_random(len(pool), unseen):
        chosen: dict[str, None] = {}
        for _ in range(64 * k):
            item = pool[rng.randrange(len(pool))]
            if not seen(item):
                chosen[item] = None
                if len(chosen) == k:
                    return list(chosen)
        return None
    listed = [i for i in pool if not seen(i)]
    return rng.sample(listed, k) if len(listed) >= k else None


def dominant_category(golden: Sequence[str], category: Mapping[str, str]) -> str:
    """The category most of the list's items share (ties: the smallest name)."""
    counts = Counter(category.get(i, "") for i in golden)
    return min(counts, key=lambda c: (-counts[c], c))


def diversity_negative(
    golden: Sequence[str],
    category: Mapping[str, str],
    items_by_category: Mapping[str, Sequence[str]],
    seen: Callable[[str], bool],
    seen_per_category: Mapping[str, int],
    rng: random.Random,
) -> tuple[str, ...] | None:
    """Replace the items outside the dominant category with unseen items of that category
    (``seen_per_category``: how many items of each category are ``seen``)."""
    if len({category.get(i, "") for i in golden}) < 2:
        return None
    dominant = dominant_category(golden, category)
    outsiders = [i for i in golden if category.get(i, "") != dominant]
    pool = items_by_category.get(dominant, ())
    unseen = len(pool) - seen_per_category.get(dominant, 0)
    replacements = sample_unseen(pool, len(outsiders), seen, unseen, rng)
    if replacements is None:
        return None
    fill = iter(replacements)
    return tuple(i if category.get(i, "") == dominant else next(fill) for i in golden)


def redundancy_negative(
    golden: Sequence[str], category: Mapping[str, str], rng: random.Random
) -> tuple[str, ...] | None:
    """The same items grouped by category (groups in random order, items in golden order)."""
    groups: dict[str, list[str]] = {}
    for item in golden:
        groups.setdefault(category.get(item, ""), []).append(item)
    order = list(groups)
    rng.shuffle(order)
    clustered = tuple(item for cat in order for item in groups[cat])
    if adjacent_same_category(clustered, category) <= adjacent_same_category(golden, category):
        return None
    return clustered


def build_pairs(
    golden: GoldenList,
    history: SortedRatings,
    category: Mapping[str, str],
    items_by_category: Mapping[str, Sequence[str]],
    seed: int,
    held_out: frozenset[str] = frozenset(),
    families: Collection[PairFamily] = PAIR_FAMILIES,
) -> tuple[list[PreferencePair], dict[PairFamily, str]]:
    """The user's pairs of each of ``families``, and why each missing family was skipped.

    ``held_out`` items (the user's validation and test positives) never enter a negative.
    """
    items, user = golden.items, golden.user_id
    skipped: dict[PairFamily, str] = {}
    if not items:
        return [], dict.fromkeys(families, "empty golden list")
    # Golden items are rated, so "seen" covers them too.
    ratings = history.ratings
    seen_per_category = history.rated_per_category
    if held_out:
        seen_per_category = seen_per_category + Counter(
            category.get(i, "") for i in held_out if i not in ratings
        )

    def seen(item: str) -> bool:
        return item in ratings or item in held_out

    negatives: dict[PairFamily, tuple[Callable[[], tuple[str, ...] | None], str]] = {
        "np": (lambda: preference_negative(items, history.disliked), "no item rated below 3"),
        "rk": (
            lambda: ranking_negative(items, family_rng(seed, user, "rk")),
            "list shorter than 2",
        ),
        "d": (
            lambda: diversity_negative(
                items,
                category,
                items_by_category,
                seen,
                seen_per_category,
                family_rng(seed, user, "d"),
            ),
            "one category only, or too few unseen items of the dominant category",
        ),
        "rd": (
            lambda: redundancy_negative(items, category, family_rng(seed, user, "rd")),
            "already clustered by category",
        ),
    }
    pairs = []
    for family in PAIR_FAMILIES:
        if family not in families:
            continue
        negative, reason = negatives[family]
        rejected = negative()
        if rejected is None:
            skipped[family] = reason
        else:
            pairs.append(
                PreferencePair(user_id=user, family=family, chosen=items, rejected=rejected)
            )
    return pairs, skipped
