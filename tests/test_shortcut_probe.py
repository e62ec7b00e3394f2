"""The shortcut probe: list features by hand, and a family told apart only when it should be."""

from __future__ import annotations

import math

import numpy as np
import pytest

from learner.shortcut_probe import (
    fit_pairwise_logistic,
    list_features,
    pairwise_accuracy,
    probe_by_feature,
    shortcut_probe,
)
from schemas import CatalogueItem
from schemas.training_data import PreferencePair
from streams.derive.training_snapshot import TrainingSnapshot


def test_list_features_by_hand() -> None:
    features = list_features(
        ["a", "b", "c", "d"],
        rated={"a", "b", "x"},
        popularity={"a": 3.0, "b": 0.0, "c": 7.0},
        mean_rating={"a": 4.0, "b": 2.0, "c": 5.0, "d": 1.0},
        category={"a": "k1", "b": "k1", "c": "k2"},  # "d" has none: a category of its own
    )
    # share 2/4; categories k1, k2, ""; popularity (log 4 + log 1 + log 8 + log 1) / 4
    expected = [0.5, 3, (math.log(4) + math.log(8)) / 4, (4 + 2 + 5 + 1) / 4]
    assert features == pytest.approx(expected)
    # Reordered, the same items give the very same features (a swap family probes at 0.5);
    # a plain float sum would not: (0.1 + 0.2) + 0.3 != (0.3 + 0.2) + 0.1.
    reordered = ["d", "c", "b", "a"]
    assert (
        list_features(reordered, {"a"}, {"a": 0.1, "c": 0.7}, {"a": 0.1, "b": 0.2, "c": 0.3}, {})
        == list_features(
            ["a", "b", "c", "d"], {"a"}, {"a": 0.1, "c": 0.7}, {"a": 0.1, "b": 0.2, "c": 0.3}, {}
        )
    ).all()


def test_one_telling_feature_is_found_and_identical_lists_are_chance() -> None:
    rng = np.random.default_rng(0)
    noise = rng.normal(size=(400, 3))
    telling = np.column_stack([np.abs(rng.normal(size=400)) + 0.1, noise])  # chosen always higher
    w = fit_pairwise_logistic(telling)
    assert pairwise_accuracy(w, telling) == 1.0 and abs(w[0]) > abs(w[1:]).max()
    same = np.zeros((50, 4))  # a swap of the same items: no feature moves
    assert pairwise_accuracy(fit_pairwise_logistic(same), same) == 0.5


def test_noise_alone_probes_near_chance() -> None:
    rng = np.random.default_rng(1)
    train, held = rng.normal(size=(2000, 4)), rng.normal(size=(2000, 4))
    assert abs(pairwise_accuracy(fit_pairwise_logistic(train), held) - 0.5) < 0.05


def test_a_family_that_keeps_one_category_is_given_away_by_the_categories_alone() -> None:
    # The paper's d family: the rejected list keeps only the golden list's dominant category,
    # so "number of categories" separates it from its chosen list whatever else they share.
    catalogue = {f"i{n}": CatalogueItem(item_id=f"i{n}", category=f"c{n % 2}") for n in range(50)}
    snapshot = TrainingSnapshot(catalogue=catalogue)
    users = [f"u{n}" for n in range(20)]
    for n, user in enumerate(users):
        chosen = (f"i{2 * n}", f"i{2 * n + 1}", f"i{2 * n + 2}")  # c0, c1, c0
        rejected = (f"i{2 * n}", f"i{2 * n + 4}", f"i{2 * n + 2}")  # the c1 item replaced
        snapshot.train_ratings[user] = dict.fromkeys((*chosen, *rejected), 4)
        snapshot.pairs.setdefault("d", []).append(
            PreferencePair(user_id=user, family="d", chosen=chosen, rejected=rejected)
        )
    by_feature = probe_by_feature(snapshot, set(users[:10]))
    assert by_feature["categories"]["d"] == 1.0
    assert by_feature["share_rated"]["d"] == 0.5  # every item rated: nothing to tell apart
    with pytest.raises(ValueError, match="features"):
        shortcut_probe(snapshot, set(users[:10]), ("price",))
