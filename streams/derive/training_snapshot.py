"""What the learner trains on: split per user, then built from the training part only.

Prompts, golden lists, pairs and the popularity s_i that breaks golden-list ties are all
computed from the training ratings, so no validation or test positive leaks into them; the
diversity family never draws a held-out item as a replacement either.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field

from schemas import CatalogueItem
from schemas.training_data import (
    EffectiveRating,
    GoldenList,
    PairFamily,
    PreferencePair,
    UserPrompt,
)
from streams.derive.derived_state import DeriveConfig, ItemStats
from streams.derive.golden_list import as_models, prompt_and_golden_items
from streams.derive.preference_pairs import build_pairs
from streams.derive.sorted_ratings import SortedRatings
from streams.derive.split import UserSplit, split_user


@dataclass
class TrainingSnapshot:
    catalogue: dict[str, CatalogueItem]
    prompts: dict[str, UserPrompt] = field(default_factory=dict)
    golden: dict[str, GoldenList] = field(default_factory=dict)
    pairs: dict[PairFamily, list[PreferencePair]] = field(default_factory=dict)
    validation: dict[str, tuple[str, ...]] = field(default_factory=dict)
    test: dict[str, tuple[str, ...]] = field(default_factory=dict)
    train_ratings: dict[str, dict[str, int]] = field(default_factory=dict)  # user -> item -> r
    # user -> the training positives by (time, item id): the interaction sequence
    train_sequences: dict[str, tuple[str, ...]] = field(default_factory=dict)
    # user -> their most recent L training positives, oldest first: what a page request is
    # conditioned on when recommending. A short history's prompt (paired with its golden list)
    # holds fewer (``golden_list.prompt_length_for``); a request uses all it knows.
    histories: dict[str, tuple[str, ...]] = field(default_factory=dict)
    skipped: Counter[tuple[PairFamily, str]] = field(default_factory=Counter)
    users_left_out: int = 0


def train_popularity(train: Mapping[str, Mapping[str, EffectiveRating]]) -> dict[str, float]:
    """s_i over the training ratings of all users."""
    stats: dict[str, ItemStats] = {}
    for ratings in train.values():
        for item, r in ratings.items():
            s = stats.setdefault(item, ItemStats())
            s.count += 1
            s.rating_sum += r.rating
    return {item: s.mean for item, s in stats.items()}


def build_training_snapshot(
    user_ratings: Mapping[str, Mapping[str, EffectiveRating]],
    catalogue: Mapping[str, CatalogueItem],
    config: DeriveConfig,
    given_splits: Mapping[str, UserSplit] | None = None,
) -> TrainingSnapshot:
    """Split every user chronologically, or as ``given_splits`` says (users it does not name
    are left out), and build the training data from the train parts."""
    snapshot = TrainingSnapshot(catalogue=dict(catalogue))
    category = {i: item.category for i, item in catalogue.items()}
    by_category: dict[str, list[str]] = {}
    for item_id in sorted(category):
        by_category.setdefault(category[item_id], []).append(item_id)

    splits = {}
    for user, ratings in sorted(user_ratings.items()):
        split = given_splits.get(user) if given_splits is not None else split_user(ratings)
        if split is None:
            snapshot.users_left_out += 1
        else:
            splits[user] = split
    popularity = train_popularity({u: s.train for u, s in splits.items()})
    for user, split in splits.items():
        history = SortedRatings.build(user, split.train, popularity, category)
        prompt, golden = as_models(
            user,
            *prompt_and_golden_items(
                history,
                category,
                prompt_length=config.prompt_length,
                list_length=config.list_length,
                category_cap=config.category_cap,
            ),
        )
        pairs, skipped = build_pairs(
            golden,
            history,
            category,
            by_category,
            config.seed,
            held_out=frozenset((*split.validation, *split.test)),
        )
        snapshot.prompts[user], snapshot.golden[user] = prompt, golden
        snapshot.validation[user], snapshot.test[user] = split.validation, split.test
        snapshot.train_ratings[user] = {i: r.rating for i, r in split.train.items()}
        snapshot.train_sequences[user] = tuple(history.chronological)
        recent = history.chronological[-config.prompt_length :] if config.prompt_length else []
        snapshot.histories[user] = tuple(recent)
        for pair in pairs:
            snapshot.pairs.setdefault(pair.family, []).append(pair)
        snapshot.skipped.update(skipped.items())
    return snapshot


def snapshot_digest(snapshot: TrainingSnapshot) -> str:
    """sha256 of everything training reads from the snapshot (equal digests, equal data)."""
    content = {
        "catalogue": {i: c.model_dump(mode="json") for i, c in snapshot.catalogue.items()},
        "prompts": {u: p.items for u, p in snapshot.prompts.items()},
        "golden": {u: g.items for u, g in snapshot.golden.items()},
        "pairs": {
            family: [p.model_dump(mode="json") for p in pairs]
            for family, pairs in snapshot.pairs.items()
        },
        "validation": snapshot.validation,
        "test": snapshot.test,
        "train_ratings": snapshot.train_ratings,
        "train_sequences": snapshot.train_sequences,
        "histories": snapshot.histories,
    }
    encoded = json.dumps(content, sort_keys=True, default=str).encode()
    return hashlib.sha256(encoded).hexdigest()
