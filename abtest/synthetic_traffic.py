"""Synthetic experiment traffic: realistic-shaped events with a planted lift, to rehearse on.

Users are bucketed by the experiment's own assignment. Each user has a lasting activity level,
click propensity and spend, so their pre-period predicts their experiment period (what CUPED
uses). Sessions fall uniformly in the pre-period and in the experiment window; a session is one
or more pages, some clicks and sometimes a purchase. Treatment variants' prices are multiplied
by ``1 + gmv_lift``, a pure GMV lift. Events come out as Arrow tables of the event columns (an
analyst's ``events`` row), in chunks of users, generated with vectorised numpy.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from abtest.assignment import assign
from abtest.experiment import Experiment
from schemas import event_to_json
from streams.store.ledger_schema import LEDGER_SCHEMA, event_from_row

PAGE_SIZE = 5
SYNTHETIC_TOPIC = "synthetic-traffic"
CATALOGUE_SIZE = 50_000
TYPES = np.array(["impression", "click", "purchase"])


@dataclass(frozen=True)
class TrafficShape:
    """Means of the user model; defaults give about ten events per user over both periods."""

    sessions_per_period: float = 2.0
    extra_pages_per_session: float = 0.5
    click_propensity_beta: tuple[float, float] = (2.0, 8.0)
    purchase_probability: float = 0.08
    buyer_propensity_shape: float = 0.5
    spend_lognormal: tuple[float, float] = (3.0, 0.8)
    gmv_lift: float = 0.0


def _strings(prefix: str, numbers: np.ndarray) -> pa.Array:
    """prefix + str(n) for each n, built in Arrow (fast for tens of millions)."""
    return pc.binary_join_element_wise(prefix, pc.cast(pa.array(numbers), pa.string()), "")


def _user_chunk(
    experiment: Experiment,
    window_end: datetime,
    first_user: int,
    users: int,
    shape: TrafficShape,
    rng: np.random.Generator,
) -> pa.Table:
    ids = np.arange(first_user, first_user + users)
    variants = [assign(experiment, f"u{i}") for i in ids]
    keep = np.array([v is not None for v in variants])
    ids, variant_of_user = ids[keep], np.array([v for v in variants if v is not None])
    n = len(ids)
    treated = variant_of_user != experiment.control.name
    activity = rng.gamma(2.0, shape.sessions_per_period / 2.0, n)
    click_taste = rng.beta(*shape.click_propensity_beta, n)
    spend = rng.lognormal(*shape.spend_lognormal, n)
    # Buyers differ far more than browsers do: a skewed propensity with mean 1.
    buying = rng.gamma(shape.buyer_propensity_shape, 1 / shape.buyer_propensity_shape, n)

    # Sessions: each user's pre-period ones first, then the window's (at least one: exposure).
    pre = rng.poisson(activity) if experiment.pre_period_days > 0 else np.zeros(n, int)
    post = rng.poisson(activity) + 1
    per_user = pre + post
    session_user = np.repeat(np.arange(n), per_user)
    rank_in_user = np.arange(len(session_user)) - np.repeat(
        np.cumsum(per_user) - per_user, per_user
    )
    in_window = rank_in_user >= np.repeat(pre, per_user)
    s = len(session_user)
    start_s = experiment.start.timestamp()
    pre_s = experiment.pre_start.timestamp()
    end_s = window_end.timestamp() - 600  # room for the session's later events
    # Without a pre-period no session falls before the start; the bounds must still be ordered.
    pre_end_s = max(pre_s, start_s - 600)
    session_ts = np.where(
        in_window, rng.uniform(start_s, end_s, s), rng.uniform(pre_s, pre_end_s, s)
    )
    pages = 1 + rng.poisson(shape.extra_pages_per_session, s)
    clicks = rng.binomial(pages, click_taste[session_user])
    buys = rng.random(s) < shape.purchase_probability * buying[session_user] * (1 + clicks)
    counts = pages + clicks + buys
    total = int(counts.sum())

    event_session = np.repeat(np.arange(s), counts)
    offset_in_session = np.arange(total) - np.repeat(np.cumsum(counts) - counts, counts)
    page_of = np.repeat(pages, counts)
    click_of = np.repeat(clicks, counts)
    kind = np.where(offset_in_session < page_of, 0, np.where(offset_in_session < page_of +
                    click_of, 1, 2))  # fmt: skip
    user = session_user[event_session]
    ts = session_ts[event_session] + 30.0 * offset_in_session + rng.uniform(0, 5, total)
    window = in_window[event_session]
    is_imp, is_click, is_buy = kind == 0, kind == 1, kind == 2
    request_no = np.minimum(offset_in_session, page_of - 1)  # a click answers the last page

    quantity = np.where(is_buy, 1 + rng.poisson(0.3, total), 0)
    lift = np.where(treated[user] & window, 1.0 + shape.gmv_lift, 1.0)
    price = np.round(spend[user] * rng.lognormal(0, 0.3, total) * lift, 2)
    item = rng.integers(0, CATALOGUE_SIZE, total)
    position = rng.integers(1, PAGE_SIZE + 1, total)

    user_ids = _strings("u", ids[user])
    event_ids = _strings(f"x{first_user}-", np.arange(total))
    null_str = pa.nulls(total, pa.string())
    tagged = is_imp & window
    variant_names = pa.array(np.where(tagged, variant_of_user[user], None))
    page_items = pa.StructArray.from_arrays(
        [_strings("i", rng.integers(0, CATALOGUE_SIZE, total * PAGE_SIZE)),
         pa.array(np.tile(np.arange(1, PAGE_SIZE + 1, dtype=np.int16), total))],
        names=["item_id", "position"],
    )  # fmt: skip
    page = pa.ListArray.from_arrays(
        pa.array(np.arange(0, (total + 1) * PAGE_SIZE, PAGE_SIZE, dtype=np.int32)),
        page_items,
        mask=pa.array(~is_imp),
    )
    money = pa.array(np.where(is_buy, price, np.nan), from_pandas=True).cast(
        LEDGER_SCHEMA.field("unit_price").type
    )
    gmv = pa.array(np.where(is_buy, price * quantity, np.nan), from_pandas=True).cast(
        LEDGER_SCHEMA.field("gmv").type
    )
    versions = {v.name: v.model_version for v in experiment.variants}
    names, inverse = np.unique(variant_of_user, return_inverse=True)
    user_version = np.array([versions[name] for name in names] or ["-"])[inverse]
    model_version = np.where(tagged, user_version[user], "prod")
    columns = {
        "event_id": event_ids,
        "type": pa.array(TYPES[kind]),
        "user_id": user_ids,
        "session_id": _strings(f"s{first_user}-", event_session),
        "ts": pa.array((ts * 1e6).astype("int64"), pa.int64()).cast(pa.timestamp("us", "UTC")),
        "schema_version": pa.array(np.ones(total, np.int16)),
        "request_id": pc.if_else(
            pa.array(is_buy), null_str, _strings(f"r{first_user}-", event_session * 64 + request_no)
        ),
        "item_id": pc.if_else(pa.array(is_imp), null_str, _strings("i", item)),
        "position": pa.array(np.where(is_click, position, 0).astype(np.int16), mask=~is_click),
        "quantity": pa.array(quantity.astype(np.int32), mask=~is_buy),
        "unit_price": money,
        "currency": pc.if_else(pa.array(is_buy), "EUR", null_str),
        "gmv": gmv,
        "model_version": pc.if_else(pa.array(is_imp), pa.array(model_version), null_str),
        "experiment": pc.if_else(pa.array(tagged), experiment.name, null_str),
        "variant": variant_names,
        "page": page,
    }
    return pa.table(columns)


def synthetic_traffic(
    experiment: Experiment,
    users: int,
    *,
    shape: TrafficShape | None = None,
    window_end: datetime | None = None,
    seed: int = 0,
    chunk_users: int = 200_000,
) -> Iterator[pa.Table]:
    """Event columns for users u0..u{users-1} (those the experiment takes), chunk by chunk."""
    shape = shape or TrafficShape()
    end = window_end or experiment.end or experiment.start + timedelta(days=7)
    rng = np.random.default_rng(seed)
    for first in range(0, users, chunk_users):
        yield _user_chunk(experiment, end, first, min(chunk_users, users - first), shape, rng)


def as_json_lines(events: pa.Table) -> Iterator[bytes]:
    """The wire form of each generated event, ready for ``pagellm produce``."""
    for row in events.to_pylist():
        yield event_to_json(event_from_row(row))


def as_ledger_rows(events: pa.Table, first_offset: int) -> pa.Table:
    """Event columns as ledger rows, as if consumed in order from one partition (bulk loads)."""
    n = events.num_rows
    source = {
        "kafka_topic": pa.array([SYNTHETIC_TOPIC] * n),
        "kafka_partition": pa.array(np.zeros(n, np.int32)),
        "kafka_offset": pa.array(np.arange(first_offset, first_offset + n)),
        "kafka_timestamp": events["ts"],
        "ingested_at": events["ts"],
    }
    columns = [
        events[f.name] if f.name in events.column_names else source.get(f.name, pa.nulls(n))
        for f in LEDGER_SCHEMA
    ]
    return pa.table([c.cast(f.type) for c, f in zip(columns, LEDGER_SCHEMA, strict=True)],
                    schema=LEDGER_SCHEMA)  # fmt: skip
