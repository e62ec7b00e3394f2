"""Prompts and golden lists on hand-made users: rating order, popularity tie-break, the cap."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from schemas.training_data import EffectiveRating
from streams.derive.golden_list import (
    apply_category_cap,
    build_prompt_and_golden_list,
    category_slots,
    prompt_length_for,
)
from streams.derive.sorted_ratings import SortedRatings

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def ratings(*rows: tuple[str, int, int]) -> dict[str, EffectiveRating]:
    """(item, rating, minute) rows of user u1."""
    return {
        item: EffectiveRating(
            user_id="u1", item_id=item, rating=r, ts=T0 + timedelta(minutes=m), explicit=True
        )
        for item, r, m in rows
    }


def test_rank_by_rating_then_popularity_then_id() -> None:
    user = ratings(("a", 4, 1), ("b", 5, 2), ("c", 4, 3), ("d", 4, 4), ("e", 5, 5))
    popularity = {"a": 3.9, "c": 4.5, "d": 3.9}
    ranked = SortedRatings.build("u1", user, popularity, {}).ranked
    assert list(ranked) == ["b", "e", "c", "a", "d"]


def test_category_slots_is_floor_of_cap_times_size_at_least_one() -> None:
    assert [category_slots(n, 0.4) for n in (1, 2, 3, 5, 10, 12)] == [1, 1, 1, 2, 4, 4]


def test_cap_passes_over_an_over_represented_category() -> None:
    ranked = ["a1", "a2", "a3", "a4", "a5", "a6", "b1", "c1", "b2", "c2", "d1"]
    category = {i: i[0] for i in ranked}
    items, relaxed = apply_category_cap(ranked, category, size=10, cap=0.4)
    # a holds 4 slots; a5 and a6 are passed over for the b, c and d items that follow.
    assert items == ("a1", "a2", "a3", "a4", "b1", "c1", "b2", "c2", "d1", "a5")
    assert relaxed  # ten slots and only five non-a items: a5 fills the last one


def test_cap_is_kept_when_the_candidates_allow_it() -> None:
    ranked = ["a1", "a2", "a3", "b1", "b2", "c1", "c2", "a4"]
    category = {i: i[0] for i in ranked}
    items, relaxed = apply_category_cap(ranked, category, size=5, cap=0.4)
    assert items == ("a1", "a2", "b1", "b2", "c1") and not relaxed


def test_one_category_relaxes_the_cap_rather_than_shortening_the_list() -> None:
    ranked = ["a1", "a2", "a3"]
    items, relaxed = apply_category_cap(ranked, {i: "a" for i in ranked}, size=10, cap=0.4)
    assert items == ("a1", "a2", "a3") and relaxed


def test_prompt_holds_the_latest_positives_and_the_golden_list_the_rest() -> None:
    user = ratings(
        ("old1", 5, 1),
        ("old2", 4, 2),
        ("disliked", 2, 3),
        ("neutral", 3, 4),
        ("new1", 4, 5),
        ("new2", 5, 6),
        ("new3", 4, 7),
    )
    category = {"old1": "x", "old2": "y", "new1": "x", "new2": "y", "new3": "z"}
    prompt, golden = build_prompt_and_golden_list(
        "u1", user, popularity={}, category=category, prompt_length=3, list_length=2
    )
    # 5 positives, L = 3, K = 2: the list keeps min(2, 3) = 2, so the prompt takes 3.
    assert prompt.items == ("new1", "new2", "new3")  # oldest first
    assert golden.items == ("old1", "old2")  # r >= 4 only, not in the prompt, by rating
    assert not golden.cap_relaxed  # two slots, one per category: within max(1, 0.8)
    # With K = 10 the 5 positives are a short history: the list keeps ceil(5 / 2) = 3.
    prompt, golden = build_prompt_and_golden_list(
        "u1", user, popularity={}, category=category, prompt_length=3, list_length=10
    )
    assert prompt.items == ("new2", "new3")
    # Ranked old1 (5), new1, old2 (4s by id); one slot per category in a list of 3, so new1
    # (x, like old1) is passed over, then fills the list: the cap is relaxed.
    assert golden.items == ("old1", "old2", "new1") and golden.cap_relaxed


def test_prompt_length_leaves_a_short_history_half_for_its_golden_list() -> None:
    # min(L, P - min(K, ceil(P / 2))) with L = 20, K = 10
    lengths = [prompt_length_for(p, 20, 10) for p in (0, 1, 2, 3, 10, 21, 25, 30, 31, 100)]
    assert lengths == [0, 0, 1, 1, 5, 11, 15, 20, 20, 20]
    assert prompt_length_for(50, 0, 10) == 0
