"""A user's ratings kept sorted as they change equal the same ratings sorted from scratch."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.training_data import EffectiveRating
from streams.derive.sorted_ratings import SortedRatings

T0 = datetime(2026, 1, 1, tzinfo=UTC)
CATEGORY = {f"i{n}": f"c{n % 3}" for n in range(12)}
POPULARITY = {f"i{n}": n / 4 for n in range(12)}


def rating(item: str, r: int, minute: int) -> EffectiveRating:
    return EffectiveRating(
        user_id="u", item_id=item, rating=r, ts=T0 + timedelta(minutes=minute), explicit=True
    )


def test_each_order_by_hand() -> None:
    history = SortedRatings("u")
    for r in (rating("i1", 5, 3), rating("i2", 4, 1), rating("i3", 1, 2), rating("i4", 2, 5)):
        history.set(r.item_id, r, POPULARITY[r.item_id], CATEGORY[r.item_id])
    history.set("i5", rating("i5", 5, 4), 9.0, CATEGORY["i5"])
    history.set("i2", rating("i2", 2, 6), POPULARITY["i2"], CATEGORY["i2"])  # no longer liked
    assert list(history.chronological) == ["i1", "i5"]
    assert list(history.ranked) == ["i5", "i1"]  # rating, then s_i desc
    # Lowest rating first, then the most recent.
    assert list(history.disliked) == ["i3", "i2", "i4"]
    assert history.rated_per_category == {"c1": 2, "c2": 2, "c0": 1}
    history.set("i1", None, 0.0, CATEGORY["i1"])
    assert "i1" not in history and history.rated_per_category["c1"] == 1


@settings(max_examples=200, deadline=None)
@given(
    changes=st.lists(
        st.tuples(
            st.sampled_from(sorted(CATEGORY)),
            st.one_of(st.none(), st.integers(1, 5)),
            st.integers(0, 50),
        ),
        max_size=40,
    )
)
def test_kept_sorted_equals_sorted_afresh(changes: list[tuple[str, int | None, int]]) -> None:
    history = SortedRatings("u")
    for item, r, minute in changes:
        new = None if r is None else rating(item, r, minute)
        history.set(item, new, POPULARITY[item], CATEGORY[item])
    afresh = SortedRatings.build("u", history.ratings, POPULARITY, CATEGORY)
    assert history == afresh


def test_ranks_apart_popularities_that_round_to_one_number() -> None:
    history = SortedRatings("u")
    close = 4.0 + 2**-50  # 5 * 1024 + s_i rounds both to one float: the exact key decides
    history.set("i1", rating("i1", 5, 1), 4.0, "c")
    history.set("i2", rating("i2", 5, 2), close, "c")
    history.set("i0", rating("i0", 5, 3), 4.0, "c")
    assert history.ranked.numbers[0] == history.ranked.numbers[1] == history.ranked.numbers[2]
    assert list(history.ranked) == ["i2", "i0", "i1"]  # s_i desc, then item id
    afresh = SortedRatings.build("u", history.ratings, {"i0": 4.0, "i1": 4.0, "i2": close}, {})
    assert list(afresh.ranked) == ["i2", "i0", "i1"]
    history.set("i0", None, 0.0, "c")
    assert list(history.ranked) == ["i2", "i1"]


def test_same_second_orders_by_item_id() -> None:
    history = SortedRatings("u")
    for item in ("i3", "i1", "i2"):
        history.set(item, rating(item, 5, 7), 1.0, "c")
        history.set(f"x{item}", rating(f"x{item}", 1, 7), 1.0, "c")
    assert list(history.chronological) == ["i1", "i2", "i3"]
    assert list(history.disliked) == ["xi1", "xi2", "xi3"]


def test_a_popularity_out_of_range_is_refused_by_name() -> None:
    history = SortedRatings("u")
    history.set("i1", rating("i1", 4, 1), 2.0, "c")
    with pytest.raises(ValueError, match="popularity s_i"):
        history.set("i1", rating("i1", 5, 2), float("nan"), "c")
    assert history == SortedRatings.build("u", {"i1": rating("i1", 4, 1)}, {"i1": 2.0}, {"i1": "c"})
