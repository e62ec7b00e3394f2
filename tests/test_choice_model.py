"""The simulated users' choice model against hand-computed cases, and the simulated world's
promises: the same seed gives the same world, and a user's history follows their tastes."""

from __future__ import annotations

import math
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

from deploy.choice_model import (
    click_probability,
    examination,
    expected_clicks,
    purchase_probability,
    rating_of,
    sigmoid,
    utilities,
    utility,
)
from deploy.simulated_users import SimulatorSettings, build_population

NOW = datetime(2026, 12, 1, tzinfo=UTC)


def test_utility_by_hand() -> None:
    # C = 4, a = 0.5: log(2); quality 0.3; price 40 against a price point of 20: log(2) off.
    s = utility(0.5, 4, 0.3, 40.0, 20.0, w_cat=1.0, w_quality=2.0, w_price=0.5)
    assert s == pytest.approx(math.log(2) + 0.6 - 0.5 * math.log(2))
    # A cheaper item than the price point costs nothing; an even affinity adds nothing.
    assert utility(0.25, 4, 0.0, 10.0, 20.0, 1.0, 1.0, 1.0) == pytest.approx(0.0)


def test_vectorised_utilities_equal_the_scalar_formula() -> None:
    affinities = np.array([0.7, 0.2, 0.1])
    cats, quality, prices = np.array([0, 2, 1]), np.array([0.1, -0.4, 1.2]), np.array([5, 50, 30])
    got = utilities(affinities, cats, quality, prices.astype(float), 25.0, 1.0, 0.5, 2.0)
    want = [
        utility(affinities[c], 3, q, p, 25.0, 1.0, 0.5, 2.0)
        for c, q, p in zip(cats, quality, prices, strict=True)
    ]
    assert got == pytest.approx(want)


def test_clicks_purchases_and_ratings_by_hand() -> None:
    assert examination(1, 1.0) == 1.0 and examination(4, 1.0) == 0.25
    assert examination(4, 0.5) == 0.5
    # theta_2 = 1/2, sigmoid(0) = 1/2.
    assert click_probability(1.5, 2, eta=1.0, click_bias=-1.5) == pytest.approx(0.25)
    assert purchase_probability(1.0, price=30.0, budget_left=40.0, buy_bias=-1.0) == 0.5
    assert purchase_probability(5.0, price=30.0, budget_left=29.99, buy_bias=0.0) == 0.0
    assert sigmoid(math.log(3)) == pytest.approx(0.75)
    assert rating_of(math.log(3), 0.0) == 4  # 1 + round(4 * 0.75)
    assert rating_of(-50.0, 0.0) == 1 and rating_of(50.0, 0.0) == 5


def test_expected_clicks_of_a_page_by_hand() -> None:
    # Slots 1 and 2 at sigmoid(0) = 1/2, looked at with 1 and 1/2; slot 3 an unknown item.
    assert expected_clicks([1.5, 1.5, None], eta=1.0, click_bias=-1.5) == pytest.approx(0.75)
    assert expected_clicks([], eta=1.0, click_bias=0.0) == 0.0


def test_the_same_seed_gives_the_same_world_and_another_seed_another() -> None:
    settings = SimulatorSettings(users=50, categories=4, items_per_category=10)
    a, b = build_population(settings, NOW), build_population(settings, NOW)
    c = build_population(settings.model_copy(update={"seed": 8}), NOW)
    assert a.history == b.history
    assert np.array_equal(a.catalogue.prices, b.catalogue.prices)
    assert all(
        np.array_equal(x.affinities, y.affinities) for x, y in zip(a.users, b.users, strict=True)
    )
    assert a.history != c.history


def test_a_synthetic_history_follows_each_users_favourite_category() -> None:
    settings = SimulatorSettings(users=200, categories=6, items_per_category=20)
    world = build_population(settings, NOW)
    category_of = dict(zip(world.catalogue.item_ids, world.catalogue.item_category, strict=True))
    by_user: dict[str, Counter[int]] = {}
    for r in world.history:
        by_user.setdefault(r.user_id, Counter())[int(category_of[r.item_id])] += 1
    hits = sum(
        by_user[u.user_id].most_common(1)[0][0] == int(np.argmax(u.affinities)) for u in world.users
    )
    assert hits / len(world.users) > 0.7  # chance would be about 1/6
    counts = Counter(r.user_id for r in world.history)
    assert min(counts.values()) >= settings.history_min
    assert max(counts.values()) <= settings.history_max
    assert all(r.ts < NOW for r in world.history)


def test_a_bad_history_range_is_refused_naming_the_field() -> None:
    with pytest.raises(ValueError, match="history_min"):
        build_population(SimulatorSettings(history_min=50, history_max=10), NOW)


def test_tastes_and_history_come_from_a_ratings_file(tmp_path: Path) -> None:
    ratings = tmp_path / "ratings.csv"
    rows = ["user_id,item_id,rating,timestamp,category,price"]
    for n, (user, item, rating, category) in enumerate(
        [("a", "x1", 5, "books"), ("a", "x2", 5, "books"), ("a", "y1", 1, "games"),
         ("b", "y1", 5, "games"), ("b", "y2", 4, "games"), ("b", "x1", 2, "books")]
    ):  # fmt: skip
        rows.append(f"{user},{item},{rating},{1_700_000_000 + n},{category},9.5")
    ratings.write_text("\n".join(rows) + "\n")
    settings = SimulatorSettings(ratings_path=ratings, ratings_format="generic")
    world = build_population(settings, NOW)
    assert [r.item_id for r in world.history] == ["x1", "x2", "y1", "y1", "y2", "x1"]
    assert world.catalogue.category_names == ["books", "games"]
    assert list(world.catalogue.prices) == [9.5] * 4
    a, b = world.users  # a liked two books, b two games: (positives + 0.3) / (2 + 0.6)
    assert a.affinities == pytest.approx([2.3 / 2.6, 0.3 / 2.6])
    assert b.affinities == pytest.approx([0.3 / 2.6, 2.3 / 2.6])
    u = world.utilities(a)
    assert u[world.index["x2"]] > u[world.index["y2"]]  # a book beats a game for a
