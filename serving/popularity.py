"""The popularity policy: the most popular items the user may see, first within the categories
of their recent events. It serves as a version of its own (a baseline an experiment compares the
learned policy with) and as the cold-start fallback of every version.

A popularity version's ``model/popularity/ranking.json`` holds its item ranking as it was when it
was registered, so the version serves the same ranking whatever the store does after: an
experiment compares two fixed policies.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Collection, Sequence
from datetime import UTC, datetime
from pathlib import Path

from learner.registry import ModelRegistry
from schemas.model_registry import VersionRecord

POPULARITY, RANKING = "popularity", "ranking.json"


def popularity_page(
    ranking: Sequence[str],
    k: int,
    banned: Collection[str],
    categories: Collection[str] = (),
    category_of: dict[str, str] | None = None,
) -> list[str]:
    """Up to k items in ``ranking`` order, none banned: those of ``categories`` first, then the
    rest (the page is shorter than k only when fewer than k items are left)."""
    category_of = category_of or {}
    allowed = [i for i in ranking if i not in banned]
    preferred = [i for i in allowed if category_of.get(i) in categories] if categories else []
    chosen = set(preferred[:k])
    return preferred[:k] + [i for i in allowed if i not in chosen][: k - len(chosen)]


def save_ranking(directory: Path, ranking: Sequence[str], category_of: dict[str, str]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    doc = {"ranking": list(ranking), "category_of": {i: category_of[i] for i in ranking
                                                     if i in category_of}}  # fmt: skip
    (directory / RANKING).write_text(json.dumps(doc))


def load_ranking(directory: Path) -> tuple[list[str], dict[str, str]]:
    doc = json.loads((directory / RANKING).read_text())
    return list(doc["ranking"]), dict(doc["category_of"])


def register_popularity_version(
    registry: ModelRegistry,
    ranking: Sequence[str],
    category_of: dict[str, str],
    work_dir: Path,
    stream_position: dict[str, int] | None = None,
) -> VersionRecord:
    """Publish a popularity ranking as a new candidate version (not promoted)."""
    if not ranking:
        raise ValueError("ranking: the store holds no item to rank (no catalogue, no feedback)")
    save_ranking(work_dir / POPULARITY, ranking, category_of)
    record = VersionRecord(
        version="",
        kind="popularity",
        created_at=datetime.now(UTC),
        snapshot_id="live-store",
        stream_position=stream_position or {},
        parent=None,
        warm_start=False,
        ablation="popularity",
        settings={},
        metrics={"items": float(len(ranking))},
    )
    return registry.publish(record, {POPULARITY: work_dir / POPULARITY})


def register_store_popularity(store_dir: Path) -> VersionRecord:
    """The store's popularity ranking as it is now, registered as a new candidate version."""
    from serving.store_context import StoreContext, StoreReader

    context = StoreContext()
    StoreReader(store_dir, context).refresh()
    category_of = {i: c.category for i, c in context.catalogue.items()}
    with tempfile.TemporaryDirectory() as work:
        return register_popularity_version(
            ModelRegistry.for_store(store_dir), context.popular_items(), category_of, Path(work)
        )
