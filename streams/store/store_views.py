"""The analysts' tables: DuckDB views over the event store's Parquet files.

A connection's views read one version of the compaction manifest's compacted files (see
``compaction_manifest``), the fresh files it does not cover up to a horizon by name, and the
fresh files after it by a glob they re-read at every query (``dataset_scan``): a query sees
every batch made durable before it started, and every row once, compacted or not.
Two ways in, neither of which locks anything a writer needs:

* Python: ``connect_store(root)`` returns an in-memory DuckDB connection with the views;
* the duckdb CLI: ``duckdb -readonly STORE/catalog.duckdb`` (written by ``write_catalog``).
"""

from __future__ import annotations

import contextlib
import logging
import re
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import pyarrow.parquet as pq

from streams.store.compaction_manifest import (
    EVENT_DATE_SQL,
    ensure_guard,
    guard_path,
    read_manifest,
)
from streams.store.event_store import LEDGER_DIR, TABLE, EventStore, PinnedFiles
from streams.store.ledger_schema import empty_ledger_table
from streams.store.sql_literals import sql_literal

log = logging.getLogger(__name__)

CATALOG_FILE = "catalog.duckdb"
# A file named (at its rename) before a view's horizon but renamed after the view was made
# would be missed by that view: writers' clocks and their rename may lag by up to this much.
CLOCK_MARGIN_S = 60
_DATASET = re.compile(r"\{dataset:([\w/-]+)\}")

_COMMON = "event_id, user_id, session_id, ts, schema_version"
_SOURCE = (
    "kafka_topic, kafka_partition, kafka_offset, kafka_timestamp, ingested_at, date, event_date"
)


def fresh_horizon(dataset: str, pinned: PinnedFiles, now_ns: int | None = None) -> str:
    """The relative path before which a view lists ``dataset``'s fresh files by name and from
    which on it finds them by glob: the name a file published ``CLOCK_MARGIN_S`` ago would
    get, or the last covered file's if later (files are named by the time they were renamed
    into place, see ``EventStore.write_table``)."""
    now_ns = time.time_ns() if now_ns is None else now_ns
    since = now_ns - CLOCK_MARGIN_S * 10**9
    day = datetime.fromtimestamp(since / 1e9, UTC)
    horizon = f"{dataset}/date={day:%Y-%m-%d}/{since:020d}"
    return max([horizon, *pinned.covered])


def dataset_scan(
    store: EventStore, dataset: str, pinned: PinnedFiles, derived: str = "", frozen: bool = False
) -> str:
    """Every row of ``dataset`` once: the compacted files of ``pinned``'s manifest version, its
    uncovered fresh files named before the horizon (``fresh_horizon``) and, by glob, every
    fresh file named after it (those published since, at every query), with the ``derived``
    columns, which the compactor stores. Refused once that version's files may be deleted.
    ``frozen``: exactly ``pinned``'s files, every fresh one by name and none published since.

    Naming the older fresh files rather than globbing them all and skipping the covered ones
    by name keeps the filter's cost per file constant: DuckDB matched each file against the
    whole list, 2 s at 2,000 covered files and growing with their square. The glob's files are
    read with the seed's schema (see below), the named ones by name."""
    options = "hive_partitioning = true, union_by_name = true"
    parts: list[str] = []
    older = list(pinned.fresh)
    if not frozen:
        horizon = fresh_horizon(dataset, pinned)
        older = [f for f in older if f < horizon]
        # Without union_by_name, which would read every globbed file's schema at each query
        # (the merged ones awaiting deletion too): the first file globbed is the seed, which
        # has the current schema, and a file after the horizon written by a worker of an older
        # schema (mid-upgrade) may fail the query until it is older than the horizon.
        parts.append(
            f"SELECT * EXCLUDE (filename){derived} "
            f"FROM read_parquet({sql_literal(store.dataset_glob(dataset))}, "
            "hive_partitioning = true, filename = true) "
            f"WHERE filename > {sql_literal(str(store.root / horizon))}"
        )
    if older:
        listed = ", ".join(sql_literal(p) for p in store.absolute(older))
        parts.append(f"SELECT *{derived} FROM read_parquet([{listed}], {options})")
    if pinned.compacted:
        listed = ", ".join(sql_literal(p) for p in store.absolute(pinned.compacted))
        parts.append(f"SELECT * FROM read_parquet([{listed}], {options})")
    union = " UNION ALL BY NAME ".join(parts)
    if not guard_path(store.root).exists():  # a read-only store never compacted: no guard yet
        return f"({union})"
    readable_from = (
        f"(SELECT readable_from FROM read_json({sql_literal(str(guard_path(store.root)))}, "
        "columns = {'readable_from': 'BIGINT'}))"
    )
    stale = (
        f"this connection's views read version {pinned.version} of the store's compacted "
        "files, some of which the compactor has since deleted: connect again (or rewrite the "
        "catalog with `pagellm store init`)"
    )
    return (
        f"(SELECT * FROM ({union}) WHERE CASE WHEN {readable_from} <= {pinned.version} "
        f"THEN true ELSE error({sql_literal(stale)}) END)"
    )


def _ledger_scan(store: EventStore, ledger: PinnedFiles, frozen: bool = False) -> str:
    return dataset_scan(store, LEDGER_DIR, ledger, f", {EVENT_DATE_SQL} AS event_date", frozen)


def missing_ledger_columns(
    con: duckdb.DuckDBPyConnection, store: EventStore, ledger: PinnedFiles
) -> dict[str, str]:
    """Columns of the current ledger schema that no file of the store has yet -> their type.

    A store written before a column was added (and not re-seeded since, see
    ``EventStore.init_dataset``) lacks it everywhere; the views then show it as null. A store
    whose seed has the current schema lacks nothing, and its files need not be read for it.
    """
    current = empty_ledger_table().schema
    seed = store.seed_path(LEDGER_DIR)
    if seed.exists() and set(current.names) <= set(pq.read_schema(seed).names):
        return {}
    con.register("_ledger_schema", empty_ledger_table())
    try:
        wanted = con.execute("DESCRIBE SELECT * FROM _ledger_schema").fetchall()
    finally:
        con.unregister("_ledger_schema")
    present = {
        row[0]
        for row in con.execute(f"DESCRIBE SELECT * FROM {_ledger_scan(store, ledger)}").fetchall()
    }
    return {name: kind for name, kind, *_ in wanted if name not in present}


def view_definitions(
    store: EventStore,
    ledger: PinnedFiles,
    missing: Mapping[str, str] | None = None,
    frozen: bool = False,
) -> dict[str, str]:
    """Name -> SELECT of every analyst view over ``ledger``'s files, in dependency order
    (``missing`` columns, of ``missing_ledger_columns``, as typed nulls; ``frozen``: see
    ``dataset_scan``)."""
    nulls = "".join(f", NULL::{kind} AS {name}" for name, kind in (missing or {}).items())
    return {
        "ingested": f"SELECT *{nulls} FROM {_ledger_scan(store, ledger, frozen)}",
        "events": (
            f"SELECT {_COMMON}, type, request_id, item_id, position, quantity, unit_price, "
            f"currency, gmv, rating, model_version, experiment, variant, page, {_SOURCE} "
            "FROM ingested WHERE reject_reason IS NULL AND type != 'catalogue' "
            # The first stored copy of an event id wins; the ingest worker flags the later ones.
            "AND duplicate IS NOT TRUE"
        ),
        "catalogue": (
            "SELECT item_id, category, brand, title, price, kafka_timestamp AS updated_at "
            "FROM ingested WHERE type = 'catalogue' AND reject_reason IS NULL "
            # One item id is one key, hence one partition: its offsets order its updates. An
            # item whose latest record is a deletion (no category) is not in the catalogue.
            "QUALIFY row_number() OVER (PARTITION BY item_id ORDER BY kafka_offset DESC) = 1 "
            "AND category IS NOT NULL"
        ),
        "impressions": (
            f"SELECT {_COMMON}, request_id, model_version, experiment, variant, page, "
            f"len(page) AS page_size, {_SOURCE} FROM events WHERE type = 'impression'"
        ),
        "impressed_items": (
            f"SELECT {_COMMON}, request_id, model_version, experiment, variant, "
            "slot.item_id AS item_id, slot.position AS position, date, event_date "
            "FROM impressions, unnest(page) AS t(slot)"
        ),
        "clicks": (
            f"SELECT {_COMMON}, request_id, item_id, position, {_SOURCE} "
            "FROM events WHERE type = 'click'"
        ),
        "purchases": (
            f"SELECT {_COMMON}, request_id, item_id, quantity, unit_price, currency, gmv, "
            f"{_SOURCE} FROM events WHERE type = 'purchase'"
        ),
        "ratings": (
            f"SELECT {_COMMON}, item_id, rating, {_SOURCE} FROM events WHERE type = 'rating'"
        ),
        # Every event id stored more than once, flagged or not: ``hidden`` copies are those
        # ``events`` leaves out; any other extra copy came from another partition (or from
        # before the flag existed) and still counts in ``events``.
        "duplicate_events": (
            "SELECT event_id, count(*) AS copies, count(*) FILTER (duplicate) AS hidden, "
            "min(ingested_at) AS first_ingested_at, "
            "list({'topic': kafka_topic, 'partition': kafka_partition, 'offset': kafka_offset} "
            "ORDER BY ingested_at, kafka_topic, kafka_partition, kafka_offset) AS records "
            "FROM ingested WHERE reject_reason IS NULL AND type != 'catalogue' "
            "GROUP BY event_id HAVING count(*) > 1"
        ),
        "rejected_events": (
            "SELECT kafka_topic, kafka_partition, kafka_offset, kafka_key, kafka_timestamp, "
            "reject_reason AS reason, raw, dead_letter, ingested_at, date, event_date "
            "FROM ingested WHERE reject_reason IS NOT NULL"
        ),
    }


def resolve_datasets(select: str, store: EventStore, pinned: Mapping[str, PinnedFiles]) -> str:
    """A registered view's SELECT with each ``{table:NAME}`` as every row of that dataset
    (``dataset_scan`` over ``pinned[NAME]``) and each ``{dataset:NAME}`` as its fresh files'
    quoted glob."""
    select = TABLE.sub(lambda m: dataset_scan(store, m[1], pinned[m[1]]), select)
    return _DATASET.sub(lambda m: sql_literal(store.dataset_glob(m[1])), select)


def create_views(
    con: duckdb.DuckDBPyConnection, store: EventStore, ledger: PinnedFiles | None = None
) -> None:
    """The ledger's views, then those registered with the store (``register_views``).
    ``ledger``: the ledger views read exactly those files (``dataset_scan``'s ``frozen``)."""
    with contextlib.suppress(OSError):  # a store mounted read-only is still read
        ensure_guard(store.root)
    manifest = read_manifest(store.root)  # one version for every dataset, read once
    # Read once: a derive worker registering its views between two reads left the second
    # naming a dataset the first had not pinned (a KeyError seen in the closed loop's test).
    registered = store.registered_views()
    pinned = {d: store.current_files(d, manifest) for d in store.datasets(registered)}
    frozen = ledger is not None
    ledger = ledger or pinned[LEDGER_DIR]
    missing = missing_ledger_columns(con, store, ledger)
    views = view_definitions(store, ledger, missing, frozen)
    views |= {n: resolve_datasets(s, store, pinned) for n, s in registered.items()}
    for name, select in views.items():
        con.execute(f"CREATE OR REPLACE VIEW {name} AS {select}")


def connect_store(root: Path | str, ledger: PinnedFiles | None = None) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB connection with the analyst views over the store at ``root``
    (``ledger``: over exactly those ledger files, for a reader that must know what it read)."""
    store = EventStore(root)
    if not (store.ledger_dir.exists()):
        raise FileNotFoundError(
            f"no event store at {store.root} (expected {store.ledger_dir}); "
            "run an ingest worker or `pagellm store init` first"
        )
    con = duckdb.connect()
    create_views(con, store, ledger)
    return con


def write_catalog(store: EventStore) -> Path | None:
    """(Re)write ``catalog.duckdb`` holding the views; skipped while an analyst has it open."""
    path = store.root / CATALOG_FILE
    try:
        with duckdb.connect(str(path)) as con:
            create_views(con, store)
    except duckdb.IOException as exc:
        log.info("catalog %s left as it is (open in another process): %s", path, exc)
        return None
    return path
