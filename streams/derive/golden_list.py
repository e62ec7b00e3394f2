"""Prompts and golden lists (PageLLM section 4.2, Stage 1), as pure functions of one user.

The prompt holds the user's most recent positives, oldest first: L of them when the user has
at least L + K (K the list length), fewer for a shorter history, so that the golden list keeps
min(K, ceil(P / 2)) of the P positives (``prompt_length_for``): every user with a positive
contributes a golden list, where a fixed L = 20 left users with 20 or fewer positives none.
The golden list ranks the remaining positives by rating, then by the item's fine-grained
popularity s_i (its mean rating over all users), then by item id, and caps the share of any
one category at lambda: an item of a category that already fills its share is passed over for
the next item of another category. All candidates are positives (r > 3), so a pass-over trades
at most a small score gap for coverage. When the candidates cannot fill the list within the
cap (too few categories), the best passed-over items fill the rest and the list says
``cap_relaxed``: a shorter list would drop relevant items to satisfy diversity, which the
paper's balancing does not ask for.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping

from schemas.training_data import EffectiveRating, GoldenList, UserPrompt
from streams.derive.feedback_ratings import is_positive
from streams.derive.sorted_ratings import SortedRatings

DEFAULT_PROMPT_LENGTH = 20
DEFAULT_LIST_LENGTH = 10
DEFAULT_CATEGORY_CAP = 0.4


def chronological_positives(ratings: Mapping[str, EffectiveRating]) -> list[EffectiveRating]:
    """The user's positives ordered by (time, item id)."""
    return sorted(
        (r for r in ratings.values() if is_positive(r.rating)), key=lambda r: (r.ts, r.item_id)
    )


def prompt_length_for(positives: int, prompt_length: int, list_length: int) -> int:
    """min(L, P - min(K, ceil(P / 2))), and 0 for P = 0: the prompt of a user with P positives."""
    kept_for_the_list = min(list_length, (positives + 1) // 2)
    return max(0, min(prompt_length, positives - kept_for_the_list))


def category_slots(size: int, cap: float) -> int:
    """Slots one category may fill in a list of ``size``: max(1, floor(cap * size))."""
    return max(1, int(cap * size + 1e-9))


def apply_category_cap(
    ranked: Iterable[str],
    category: Mapping[str, str],
    size: int,
    cap: float,
    available: int | None = None,
) -> tuple[tuple[str, ...], bool]:
    """Take items in rank order within the category cap; fill from the passed-over if short.

    ``ranked`` is read only as far as the list needs; ``available`` is how many items it holds
    (``len(ranked)`` by default). Returns the list and whether the cap had to be relaxed.
    """
    length = min(size, len(ranked) if available is None else available)  # type: ignore[arg-type]
    slots = category_slots(length, cap)
    taken: list[str] = []
    passed_over: list[str] = []
    used: Counter[str] = Counter()
    for item in ranked:
        if len(taken) == length:
            break
        cat = category.get(item, "")
        if used[cat] < slots:
            taken.append(item)
            used[cat] += 1
        else:
            passed_over.append(item)
    relaxed = len(taken) < length
    if relaxed:
        taken.extend(passed_over[: length - len(taken)])
    return tuple(taken), relaxed


def prompt_and_golden_items(
    history: SortedRatings,
    category: Mapping[str, str],
    *,
    prompt_length: int = DEFAULT_PROMPT_LENGTH,
    list_length: int = DEFAULT_LIST_LENGTH,
    category_cap: float = DEFAULT_CATEGORY_CAP,
) -> tuple[tuple[str, ...], tuple[str, ...], bool]:
    """(q_u, sigma_u^gt, cap relaxed) of one user, read off their sorted ratings (no sorting)."""
    length = prompt_length_for(len(history.chronological), prompt_length, list_length)
    prompt = tuple(history.chronological[-length:]) if length > 0 else ()  # oldest first
    in_prompt = set(prompt)
    candidates = (item for item in history.ranked if item not in in_prompt)
    items, relaxed = apply_category_cap(
        candidates,
        category,
        list_length,
        category_cap,
        available=len(history.ranked) - len(prompt),
    )
    return prompt, items, relaxed


def as_models(
    user_id: str, prompt: tuple[str, ...], items: tuple[str, ...], cap_relaxed: bool
) -> tuple[UserPrompt, GoldenList]:
    """q_u and sigma_u^gt as the models training data is made of."""
    return (
        UserPrompt(user_id=user_id, items=prompt),
        GoldenList(user_id=user_id, items=items, cap_relaxed=cap_relaxed),
    )


def build_prompt_and_golden_list(
    user_id: str,
    ratings: Mapping[str, EffectiveRating],
    popularity: Mapping[str, float],
    category: Mapping[str, str],
    *,
    prompt_length: int = DEFAULT_PROMPT_LENGTH,
    list_length: int = DEFAULT_LIST_LENGTH,
    category_cap: float = DEFAULT_CATEGORY_CAP,
) -> tuple[UserPrompt, GoldenList]:
    """q_u and sigma_u^gt of one user from their effective ratings."""
    return as_models(
        user_id,
        *prompt_and_golden_items(
            SortedRatings.build(user_id, ratings, popularity, category),
            category,
            prompt_length=prompt_length,
            list_length=list_length,
            category_cap=category_cap,
        ),
    )
