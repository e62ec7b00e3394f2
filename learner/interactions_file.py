"""The generic interactions file of ``pagellm eval``.

Columns: user_id,item_id,rating,timestamp, optionally category and split.

Ratings are explicit 1-5 stars; timestamps are Unix seconds or ISO-8601. Without a ``category``
column every item is in one category. With a ``split`` column (train/val/test per row) the split
is taken as given, so others can evaluate on exactly their split; a user's held-out parts are
then their positives (r > 3) of that part, in time order. Bad rows are errors naming the line
and the field: an evaluation on silently dropped data would not be the evaluation asked for.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from pydantic import ValidationError

from schemas import CatalogueItem
from schemas.training_data import EffectiveRating
from streams.derive.golden_list import chronological_positives
from streams.derive.split import UserSplit

REQUIRED = ("user_id", "item_id", "rating", "timestamp")
SPLITS = ("train", "val", "test")
DEFAULT_CATEGORY = "all"


class InteractionsError(ValueError):
    """A row of the interactions file that cannot be used; the message says where and why."""


@dataclass
class Interactions:
    ratings: dict[str, dict[str, EffectiveRating]]  # user -> item -> rating
    catalogue: dict[str, CatalogueItem]
    given_splits: dict[str, UserSplit] | None


def _timestamp(value: str) -> datetime:
    try:
        return datetime.fromtimestamp(float(value), UTC)
    except ValueError:
        parsed = datetime.fromisoformat(value)
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def read_interactions(path: Path) -> Interactions:
    """Every row of ``path``, validated; raises ``InteractionsError`` at the first bad one."""
    ratings: dict[str, dict[str, EffectiveRating]] = {}
    categories: dict[str, str] = {}
    parts: dict[str, dict[str, str]] = {}
    with open(path, newline="") as source:
        reader = csv.DictReader(source)
        missing = [c for c in REQUIRED if c not in (reader.fieldnames or [])]
        if missing:
            raise InteractionsError(f"{path}: missing column(s) {', '.join(missing)}")
        has_split = "split" in (reader.fieldnames or [])
        for line, row in enumerate(reader, start=2):
            try:
                ts = _timestamp(row["timestamp"])
            except ValueError:
                raise InteractionsError(
                    f"{path}:{line}: timestamp: {row['timestamp']!r} is neither Unix seconds "
                    "nor ISO-8601"
                ) from None
            try:
                stars = float(row["rating"])
            except ValueError:
                raise InteractionsError(
                    f"{path}:{line}: rating: {row['rating']!r} is not a number"
                ) from None
            try:
                rating = EffectiveRating(
                    user_id=row["user_id"],
                    item_id=row["item_id"],
                    rating=round(stars),
                    ts=ts,
                    explicit=True,
                )
            except ValidationError as exc:
                reasons = "; ".join(
                    f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()
                )
                raise InteractionsError(f"{path}:{line}: {reasons}") from None
            ratings.setdefault(rating.user_id, {})[rating.item_id] = rating
            categories.setdefault(rating.item_id, row.get("category") or DEFAULT_CATEGORY)
            if has_split:
                part = (row["split"] or "").strip().lower()
                if part not in SPLITS:
                    raise InteractionsError(
                        f"{path}:{line}: split: {row['split']!r} is not one of {', '.join(SPLITS)}"
                    )
                parts.setdefault(rating.user_id, {})[rating.item_id] = part
    catalogue = {i: CatalogueItem(item_id=i, category=c) for i, c in categories.items()}
    return Interactions(ratings, catalogue, given_splits(ratings, parts) if parts else None)


def given_splits(
    ratings: dict[str, dict[str, EffectiveRating]], parts: dict[str, dict[str, str]]
) -> dict[str, UserSplit]:
    """The split the file names: train rows as they are, val/test positives in time order."""
    splits = {}
    for user, user_ratings in ratings.items():
        part_of = parts[user]
        held = {
            name: tuple(
                r.item_id
                for r in chronological_positives(
                    {i: r for i, r in user_ratings.items() if part_of[i] == name}
                )
            )
            for name in ("val", "test")
        }
        train = {i: r for i, r in user_ratings.items() if part_of[i] == "train"}
        if held["test"]:
            splits[user] = UserSplit(train=train, validation=held["val"], test=held["test"])
    return splits
