"""A user's ratings kept sorted as they change equal the same ratings sorted from scratch."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

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
    assert [item for _, item in history.chronological] == ["i1", "i5"]
    assert history.ranked == [(-5, -9.0, "i5"), (-5, -0.25, "i1")]  # rating, then s_i desc
    # Lowest rating first, then the most recent.
    assert [item for *_, item in history.disliked] == ["i3", "i2", "i4"]
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
