"""Each negative family violates its one criterion, on generated users (hypothesis)."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.training_data import EffectiveRating, GoldenList
from streams.derive.golden_list import build_prompt_and_golden_list
from streams.derive.preference_pairs import (
    adjacent_same_category,
    build_pairs,
    family_rng,
    ranking_negative,
    redundancy_negative,
    sample_unseen,
)
from streams.derive.sorted_ratings import SortedRatings

T0 = datetime(2026, 1, 1, tzinfo=UTC)
CATALOGUE = {f"i{n}": f"c{n % 5}" for n in range(80)}
BY_CATEGORY: dict[str, list[str]] = {}
for _item, _cat in CATALOGUE.items():
    BY_CATEGORY.setdefault(_cat, []).append(_item)


@st.composite
def users(draw: st.DrawFn) -> dict[str, EffectiveRating]:
    items = draw(
        st.lists(st.sampled_from(sorted(CATALOGUE)), min_size=15, max_size=40, unique=True)
    )
    # Mostly positives, so that most users have a golden list beyond their prompt.
    stars = st.sampled_from([1, 2, 3, 4, 4, 5, 5, 5])
    return {
        item: EffectiveRating(
            user_id="u",
            item_id=item,
            rating=draw(stars),
            ts=T0 + timedelta(minutes=draw(st.integers(0, 10_000))),
            explicit=True,
        )
        for item in items
    }


def positions_differ_by_adjacent_swaps(a: tuple[str, ...], b: tuple[str, ...]) -> bool:
    k = 0
    while k < len(a):
        if a[k] == b[k]:
            k += 1
        elif k + 1 < len(a) and (a[k], a[k + 1]) == (b[k + 1], b[k]):
            k += 2
        else:
            return False
    return True


@settings(max_examples=300, deadline=None)
@given(user=users(), seed=st.integers(0, 2**32))
def test_every_family_violates_its_criterion(user: dict[str, EffectiveRating], seed: int) -> None:
    _, golden = build_prompt_and_golden_list("u", user, {}, CATALOGUE, prompt_length=5)
    history = SortedRatings.build("u", user, {}, CATALOGUE)
    pairs, skipped = build_pairs(golden, history, CATALOGUE, BY_CATEGORY, seed)
    assert {p.family for p in pairs} | set(skipped) == {"np", "rk", "d", "rd"}
    cats = lambda items: [CATALOGUE[i] for i in items]  # noqa: E731
    for pair in pairs:
        chosen, rejected = pair.chosen, pair.rejected
        assert chosen == golden.items
        if pair.family == "np":
            assert all(user[i].rating < 3 for i in rejected)
            assert not set(rejected) & set(chosen)
        elif pair.family == "rk":
            assert sorted(rejected) == sorted(chosen) and rejected != chosen
            assert positions_differ_by_adjacent_swaps(chosen, rejected)
        elif pair.family == "d":
            assert len(rejected) == len(chosen) and len(set(rejected)) == len(rejected)
            assert len(set(cats(rejected))) == 1 < len(set(cats(chosen)))
            assert all(i in chosen or i not in user for i in rejected)
        else:
            assert Counter(rejected) == Counter(chosen)
            assert adjacent_same_category(rejected, CATALOGUE) > adjacent_same_category(
                chosen, CATALOGUE
            )
    if "np" in skipped:
        assert not golden.items or all(r.rating >= 3 for r in user.values())
    if "rd" in skipped and len(golden.items) > 1:
        grouped = sum(n - 1 for n in Counter(cats(golden.items)).values())
        assert adjacent_same_category(golden.items, CATALOGUE) == grouped


def test_pairs_are_deterministic_for_a_seed() -> None:
    golden = GoldenList(user_id="u", items=tuple(f"i{n}" for n in range(10)))
    runs = [
        build_pairs(golden, SortedRatings("u"), CATALOGUE, BY_CATEGORY, seed=3)[0] for _ in range(2)
    ]
    assert runs[0] == runs[1]
    assert family_rng(3, "u", "rk").random() != family_rng(4, "u", "rk").random()


def test_users_without_material_are_skipped_with_a_reason() -> None:
    one_category = GoldenList(user_id="u", items=("i0", "i5", "i10"))  # all c0
    pairs, skipped = build_pairs(one_category, SortedRatings("u"), CATALOGUE, BY_CATEGORY, seed=1)
    assert [p.family for p in pairs] == ["rk"]
    assert skipped["np"] == "no item rated below 3"
    assert skipped["d"].startswith("one category only")
    assert skipped["rd"] == "already clustered by category"
    assert ranking_negative(("i0",), family_rng(1, "u", "rk")) is None
    assert redundancy_negative(("i0", "i1", "i2"), CATALOGUE, family_rng(1, "u", "rd")) is None


def test_unseen_items_are_drawn_without_listing_a_large_pool_and_listed_when_few() -> None:
    pool = [f"i{n}" for n in range(100)]
    seen = {f"i{n}" for n in range(0, 100, 2)}.__contains__  # half the pool
    drawn = sample_unseen(pool, 5, seen, unseen=50, rng=family_rng(1, "u", "d"))
    assert drawn is not None and len(set(drawn)) == 5 and not any(map(seen, drawn))
    assert sample_unseen(pool, 51, seen, unseen=50, rng=family_rng(1, "u", "d")) is None
    # Few unseen (the draws would mostly miss): listed. A stale count that promises more than
    # there are finds none.
    few = {f"i{n}" for n in range(97)}.__contains__
    assert sorted(sample_unseen(pool, 3, few, unseen=3, rng=family_rng(1, "u", "d")) or []) == [
        "i97",
        "i98",
        "i99",
    ]
    assert sample_unseen(pool, 4, few, unseen=60, rng=family_rng(1, "u", "d")) is None
