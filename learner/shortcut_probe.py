"""Can a pair family be told apart by trivial list features? A probe for reward shortcuts.

The reward model should learn what makes a page good for a user. If chosen and rejected lists
of a family differ in something any list shows (the rejected ones hold items the user never
rated, or less popular items), the model can score that instead, and a policy it trains then
chases the feature. The probe fits a logistic regression on four features of each list only:

* the share of its items the user rated (in training),
* the number of categories it spans,
* its items' mean popularity (log of 1 + training ratings of the item),
* its items' mean rating s_i (over all users' training ratings),

on the training users' pairs, and scores it on the validation users' pairs (the reward model's
split). Accuracy near 0.5 means the family cannot be told apart without the user; near 1.0,
that the reward model's accuracy on the family proves nothing.
"""

from __future__ import annotations

import math
from collections.abc import Container, Mapping, Sequence

import numpy as np

from schemas.training_data import PairFamily
from streams.derive.training_snapshot import TrainingSnapshot

FEATURES = ("share_rated", "categories", "mean_log_popularity", "mean_item_rating")


def list_features(
    items: Sequence[str],
    rated: Container[str],
    popularity: Mapping[str, float],
    mean_rating: Mapping[str, float],
    category: Mapping[str, str],
) -> np.ndarray:
    """[share rated, distinct categories, mean log(1 + n_i), mean s_i] of one list.

    Sums are exact (``math.fsum``), so a list and any reordering of it have equal features:
    a family that only reorders items must probe at exactly 0.5, not at rounding noise.
    """
    n = len(items)
    return np.array(
        [
            sum(i in rated for i in items) / n,
            len({category.get(i, "") for i in items}),
            math.fsum(math.log1p(popularity.get(i, 0.0)) for i in items) / n,
            math.fsum(mean_rating.get(i, 0.0) for i in items) / n,
        ]
    )


def probe_by_feature(
    snapshot: TrainingSnapshot, validation_users: set[str]
) -> dict[str, dict[PairFamily, float]]:
    """Per feature: the probe fitted on that feature alone, per family."""
    return {f: shortcut_probe(snapshot, validation_users, (f,)) for f in FEATURES}


def fit_pairwise_logistic(diffs: np.ndarray, l2: float = 1e-2, steps: int = 50) -> np.ndarray:
    """w minimising sum log(1 + exp(-w.d)) over d = f(chosen) - f(rejected), + l2/2 |w|^2.

    Each pair is seen in both orders (d labelled 1, -d labelled 0), so no intercept is needed
    and the order of a pair carries no information. Newton steps; the problem is convex.
    """
    x = np.vstack([diffs, -diffs])
    y = np.concatenate([np.ones(len(diffs)), np.zeros(len(diffs))])
    w = np.zeros(diffs.shape[1])
    for _ in range(steps):
        p = 1.0 / (1.0 + np.exp(-(x @ w)))
        gradient = x.T @ (p - y) + l2 * w
        hessian = (x.T * (p * (1 - p))) @ x + l2 * np.eye(len(w))
        step = np.linalg.solve(hessian, gradient)
        w -= step
        if np.abs(step).max() < 1e-9:
            break
    return w


def pairwise_accuracy(w: np.ndarray, diffs: np.ndarray) -> float:
    """Share of pairs with w.d > 0, a tie (w.d = 0: no feature differs) counting one half."""
    scores = diffs @ w
    return float(((scores > 0).sum() + 0.5 * (scores == 0).sum()) / len(scores))


def _standardise(train: np.ndarray, *others: np.ndarray) -> list[np.ndarray]:
    scale = train.std(axis=0)
    scale[scale == 0] = 1.0
    return [a / scale for a in (train, *others)]


def shortcut_probe(
    snapshot: TrainingSnapshot,
    validation_users: set[str],
    features: Sequence[str] = FEATURES,
) -> dict[PairFamily, float]:
    """Per family: the probe's accuracy on the validation users' pairs, fitted on ``features``
    (a subset of ``FEATURES``: one alone tells which feature gives a family away)."""
    unknown = set(features) - set(FEATURES)
    if not features or unknown:
        raise ValueError(f"features: expected a non-empty subset of {FEATURES}, got {features}")
    columns = [FEATURES.index(f) for f in features]
    counts: dict[str, int] = {}
    sums: dict[str, int] = {}
    for ratings in snapshot.train_ratings.values():
        for item, r in ratings.items():
            counts[item] = counts.get(item, 0) + 1
            sums[item] = sums.get(item, 0) + r
    mean_rating = {i: sums[i] / counts[i] for i in counts}
    popularity = {i: float(c) for i, c in counts.items()}
    category = {i: c.category for i, c in snapshot.catalogue.items()}

    def features_of(user: str, items: Sequence[str]) -> np.ndarray:
        rated = snapshot.train_ratings.get(user, {})
        return list_features(items, rated, popularity, mean_rating, category)[columns]

    out: dict[PairFamily, float] = {}
    for family, pairs in sorted(snapshot.pairs.items()):
        diffs = {True: [], False: []}  # held out for validation?
        for p in pairs:
            d = features_of(p.user_id, p.chosen) - features_of(p.user_id, p.rejected)
            diffs[p.user_id in validation_users].append(d)
        if not diffs[True] or not diffs[False]:
            continue
        train, val = _standardise(np.array(diffs[False]), np.array(diffs[True]))
        out[family] = pairwise_accuracy(fit_pairwise_logistic(train), val)
    return out
