"""The paper's split, and that nothing held out leaks into the training data."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

from schemas import CatalogueItem
from schemas.training_data import EffectiveRating
from streams.derive.derived_state import DeriveConfig
from streams.derive.golden_list import prompt_length_for
from streams.derive.split import held_out_count, split_user
from streams.derive.training_snapshot import build_training_snapshot, train_popularity

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def rated(user: str, rows: list[tuple[str, int, int]]) -> dict[str, EffectiveRating]:
    return {
        i: EffectiveRating(
            user_id=user, item_id=i, rating=r, ts=T0 + timedelta(minutes=m), explicit=True
        )
        for i, r, m in rows
    }


def test_held_out_count_is_ten_percent_rounded_half_up_at_least_one() -> None:
    assert [held_out_count(n) for n in (3, 4, 14, 15, 24, 25, 100)] == [1, 1, 1, 2, 2, 3, 10]


def test_split_orders_positives_by_time_then_item() -> None:
    # 15 positives (two at minute 14: "p14a" sorts before "p14b"), plus two non-positives.
    rows = [(f"p{m:02d}", 5, m) for m in range(13)] + [("p14b", 4, 14), ("p14a", 4, 14)]
    rows += [("meh", 3, 20), ("bad", 1, 21)]
    split = split_user(rated("u", rows))
    assert split is not None
    assert split.test == ("p14a", "p14b")  # 15 positives: 2 test, 2 validation
    assert split.validation == ("p11", "p12")
    assert set(split.train) == {f"p{m:02d}" for m in range(11)}


def test_ratings_after_the_boundary_are_unknown_to_training() -> None:
    # The boundary is the first validation positive (minute 11). "early" (a 2 at minute 5) is
    # known then; "late" (a 1 at minute 12) and "after" (a 3 at minute 30) are not: they stay
    # out of training, so evaluation does not drop them from the test's candidates either.
    rows = [(f"p{m:02d}", 5, m) for m in range(13)] + [("p14a", 4, 14), ("p14b", 4, 14)]
    rows += [("early", 2, 5), ("late", 1, 12), ("after", 3, 30), ("tie", 2, 11)]
    split = split_user(rated("u", rows))
    assert split is not None and split.validation == ("p11", "p12")
    # "tie" shares the boundary's minute but sorts after "p11": (11, "tie") > (11, "p11").
    assert set(split.train) == {f"p{m:02d}" for m in range(11)} | {"early"}


def test_users_with_fewer_than_three_positives_are_left_out() -> None:
    assert split_user(rated("u", [("a", 5, 1), ("b", 4, 2), ("c", 3, 3)])) is None
    three = split_user(rated("u", [("a", 5, 1), ("b", 4, 2), ("c", 4, 3)]))
    assert three is not None and (three.validation, three.test) == (("b",), ("c",))


def test_snapshot_builds_from_the_training_part_only() -> None:
    rng = random.Random(4)
    catalogue = {f"i{n}": CatalogueItem(item_id=f"i{n}", category=f"c{n % 6}") for n in range(200)}
    users = {
        f"u{u}": rated(
            f"u{u}",
            [
                (f"i{n}", rng.choice([1, 2, 3, 4, 5, 5]), rng.randrange(10_000))
                for n in rng.sample(range(200), rng.randrange(1, 60))
            ],
        )
        for u in range(150)
    }
    snapshot = build_training_snapshot(users, catalogue, DeriveConfig(prompt_length=10, seed=2))
    fewer = sum(1 for r in users.values() if sum(x.rating > 3 for x in r.values()) < 3)
    assert snapshot.users_left_out == fewer
    assert len(snapshot.golden) + fewer == len(users)
    assert all(snapshot.pairs.get(f) for f in ("np", "rk", "d", "rd"))
    for user, golden in snapshot.golden.items():
        held_out = set(snapshot.validation[user]) | set(snapshot.test[user])
        assert snapshot.validation[user] and snapshot.test[user]
        assert not held_out & set(snapshot.prompts[user].items)
        assert not held_out & set(golden.items)
        # Every user with a split has a training positive, hence a golden list; a request is
        # conditioned on their last 10 positives, the golden list's prompt on no more.
        positives = snapshot.train_sequences[user]
        assert golden.items and snapshot.histories[user] == positives[-10:]
        length = prompt_length_for(len(positives), prompt_length=10, list_length=10)
        assert snapshot.prompts[user].items == (positives[-length:] if length else ())
        assert set(golden.items) <= set(positives[: len(positives) - length])
    for pairs in snapshot.pairs.values():
        for pair in pairs:
            held_out = set(snapshot.validation[pair.user_id]) | set(snapshot.test[pair.user_id])
            assert not held_out & (set(pair.chosen) | set(pair.rejected)), pair


def test_popularity_counts_training_ratings_only() -> None:
    train = {"a": rated("a", [("x", 5, 1), ("y", 2, 2)]), "b": rated("b", [("x", 3, 1)])}
    assert train_popularity(train) == {"x": 4.0, "y": 2.0}
