"""The derived training data as store datasets and analyst views.

The derive worker appends, per poll, the rows of the users and items it touched, each stamped
with a ``version`` (the time of the write, increasing). A view shows the latest version per
user (or item), so a user whose list changed is shown once, as it is now.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

import pyarrow as pa

from streams.derive.derived_state import DerivedState
from streams.store.event_store import EventStore

GOLDEN_LISTS = "derived/golden_lists"
PAIRS = "derived/preference_pairs"
PAIR_SKIPS = "derived/pair_skips"
ITEM_STATS = "derived/item_stats"

_ITEMS = pa.list_(pa.string())
SCHEMAS: dict[str, pa.Schema] = {
    GOLDEN_LISTS: pa.schema(
        [
            ("user_id", pa.string()),
            ("prompt", _ITEMS),
            ("items", _ITEMS),
            ("cap_relaxed", pa.bool_()),
            ("version", pa.int64()),
        ]
    ),
    PAIRS: pa.schema(
        [
            ("user_id", pa.string()),
            ("family", pa.string()),
            ("chosen", _ITEMS),
            ("rejected", _ITEMS),
            ("version", pa.int64()),
        ]
    ),
    PAIR_SKIPS: pa.schema(
        [
            ("user_id", pa.string()),
            ("family", pa.string()),
            ("reason", pa.string()),
            ("version", pa.int64()),
        ]
    ),
    ITEM_STATS: pa.schema(
        [
            ("item_id", pa.string()),
            ("category", pa.string()),
            ("price", pa.decimal128(18, 4)),
            ("ratings", pa.int64()),
            ("mean_rating", pa.float64()),
            ("version", pa.int64()),
        ]
    ),
}


def init_derived(store: EventStore) -> None:
    """Seed the datasets and register their analyst views with the store."""
    for dataset, schema in SCHEMAS.items():
        store.init_dataset(dataset, schema.empty_table())
    store.register_views(derived_view_definitions())


def derived_tables(
    state: DerivedState, users: Iterable[str], items: Iterable[str], version: int | None = None
) -> dict[str, pa.Table]:
    """The rows of ``users`` and ``items`` as they stand in ``state``, one table per dataset."""
    version = version or time.time_ns()
    golden, pairs, skips = [], [], []
    for user_id in sorted(users):
        data = state.users[user_id]
        golden.append(
            {
                "user_id": user_id,
                "prompt": list(data.prompt.items),
                "items": list(data.golden.items),
                "cap_relaxed": data.golden.cap_relaxed,
                "version": version,
            }
        )
        pairs += [
            {
                "user_id": user_id,
                "family": p.family,
                "chosen": list(p.chosen),
                "rejected": list(p.rejected),
                "version": version,
            }
            for p in data.pairs
        ]
        skips += [
            {"user_id": user_id, "family": f, "reason": r, "version": version}
            for f, r in sorted(data.skipped.items())
        ]
    stats = [
        {
            "item_id": i,
            "category": state.category.get(i),
            "price": state.price.get(i),
            "ratings": state.items[i].count,
            "mean_rating": state.items[i].mean,
            "version": version,
        }
        for i in sorted(items)
        if i in state.items
    ]
    rows = {GOLDEN_LISTS: golden, PAIRS: pairs, PAIR_SKIPS: skips, ITEM_STATS: stats}
    return {d: pa.Table.from_pylist(r, schema=SCHEMAS[d]) for d, r in rows.items()}


def derived_view_definitions() -> dict[str, str]:
    """Analyst views: the latest version per user (golden lists, pairs) or item (stats);
    ``{table:NAME}`` is filled in by the store (``store_views.resolve_datasets``)."""
    src = {d: f"{{table:{d}}}" for d in SCHEMAS}
    latest_user = (
        f"SELECT user_id, max(version) AS version FROM {src[GOLDEN_LISTS]} GROUP BY user_id"
    )
    return {
        "golden_lists": (
            "SELECT g.user_id, g.prompt, g.items, g.cap_relaxed, g.version "
            f"FROM {src[GOLDEN_LISTS]} g "
            f"JOIN ({latest_user}) USING (user_id, version)"
        ),
        "preference_pairs": (
            f"SELECT p.user_id, p.family, p.chosen, p.rejected, p.version FROM {src[PAIRS]} p "
            f"JOIN ({latest_user}) USING (user_id, version)"
        ),
        "pair_skips": (
            f"SELECT s.user_id, s.family, s.reason, s.version FROM {src[PAIR_SKIPS]} s "
            f"JOIN ({latest_user}) USING (user_id, version)"
        ),
        "item_stats": (
            "SELECT item_id, category, price, ratings, mean_rating, version "
            f"FROM {src[ITEM_STATS]} "
            "QUALIFY row_number() OVER (PARTITION BY item_id ORDER BY version DESC) = 1"
        ),
    }
