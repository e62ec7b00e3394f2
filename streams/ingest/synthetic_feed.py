"""A generated feed of feedback events, for the demo, the tests and the benchmarks.

Each simulated session is an impression of a page of K items, then clicks on some of them,
purchases of some clicked items and the odd rating, in time order. Deterministic for a seed.
Optionally a share of the records is made invalid in one of the ways the schema rejects.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from schemas import Click, Impression, PageSlot, Purchase, Rating

Event = Impression | Click | Purchase | Rating

_COMMON_FIELDS = ("event_id", "user_id", "session_id", "ts", "schema_version")


def _common(d: dict[str, object]) -> dict[str, object]:
    return {k: d[k] for k in _COMMON_FIELDS}


# Each entry breaks a valid event's JSON in one way the schema must reject.
CORRUPTIONS: dict[str, Callable[[dict[str, object]], dict[str, object] | bytes]] = {
    "not_json": lambda d: b"\x00not json{",
    "unknown_field": lambda d: {**d, "surprise": 1},
    "wrong_type": lambda d: {**d, "user_id": 12345},
    "negative_price": lambda d: {
        **_common(d),
        "type": "purchase",
        "item_id": "i1",
        "quantity": 1,
        "unit_price": -5,
        "currency": "EUR",
    },
    "negative_quantity": lambda d: {
        **_common(d),
        "type": "purchase",
        "item_id": "i1",
        "quantity": -2,
        "unit_price": 5,
        "currency": "EUR",
    },
    "rating_out_of_range": lambda d: {**_common(d), "type": "rating", "item_id": "i1", "rating": 7},
    "future_timestamp": lambda d: {**d, "ts": (datetime.now(UTC) + timedelta(days=2)).isoformat()},
    "missing_field": lambda d: {k: v for k, v in d.items() if k != "session_id"},
    # Valid once its last user_id is kept, as json.loads and pydantic keep it.
    "repeated_key": lambda d: (
        json.dumps(d).replace('"user_id": ', '"user_id": "x", "user_id": ', 1).encode()
    ),
}


@dataclass(frozen=True)
class FeedConfig:
    users: int = 1000
    items: int = 500
    categories: int = 12
    page_size: int = 10
    click_rate: float = 0.15
    purchase_rate: float = 0.2
    rating_rate: float = 0.3
    model_versions: tuple[str, ...] = ("v1", "v2")
    seed: int = 7
    start: datetime = datetime(2026, 1, 1, tzinfo=UTC)


class FeedGenerator:
    """Sessions of events for random users; ``events(n)`` yields about n of them."""

    def __init__(self, config: FeedConfig | None = None) -> None:
        self.config = config or FeedConfig()
        self.rng = random.Random(self.config.seed)
        self._counter = 0
        self._clock = self.config.start
        self.prices = {
            f"i{i}": Decimal(self.rng.randint(100, 10_000)) / 100 for i in range(self.config.items)
        }

    def _next_id(self, prefix: str) -> str:
        self._counter += 1
        return f"{prefix}{self.config.seed}-{self._counter}"

    def session(self) -> list[Event]:
        """One session: an impression, then the feedback it drew."""
        c, rng = self.config, self.rng
        user = f"u{rng.randrange(c.users)}"
        session_id = self._next_id("s")
        request_id = self._next_id("r")
        self._clock += timedelta(milliseconds=rng.randint(1, 500))
        t = self._clock
        items = rng.sample(range(c.items), c.page_size)
        common = {"user_id": user, "session_id": session_id}
        version = c.model_versions[hash(user) % len(c.model_versions)]
        out: list[Event] = [
            Impression(
                type="impression",
                event_id=self._next_id("e"),
                ts=t,
                request_id=request_id,
                items=[PageSlot(item_id=f"i{i}", position=p + 1) for p, i in enumerate(items)],
                model_version=version,
                experiment="exp-demo",
                variant=version,
                **common,
            )
        ]
        for position, item in enumerate(items, start=1):
            if rng.random() >= c.click_rate / position**0.5:
                continue
            t += timedelta(seconds=rng.randint(1, 30))
            out.append(
                Click(
                    type="click",
                    event_id=self._next_id("e"),
                    ts=t,
                    request_id=request_id,
                    item_id=f"i{item}",
                    position=position,
                    **common,
                )
            )
            if rng.random() < c.purchase_rate:
                t += timedelta(seconds=rng.randint(5, 120))
                out.append(
                    Purchase(
                        type="purchase",
                        event_id=self._next_id("e"),
                        ts=t,
                        item_id=f"i{item}",
                        quantity=rng.randint(1, 3),
                        unit_price=self.prices[f"i{item}"],
                        currency="EUR",
                        request_id=request_id,
                        **common,
                    )
                )
            if rng.random() < c.rating_rate:
                t += timedelta(seconds=rng.randint(5, 120))
                out.append(
                    Rating(
                        type="rating",
                        event_id=self._next_id("e"),
                        ts=t,
                        item_id=f"i{item}",
                        rating=rng.randint(1, 5),
                        **common,
                    )
                )
        return out

    def events(self, n: int) -> Iterator[Event]:
        """Exactly ``n`` events (the last session may be cut short)."""
        produced = 0
        while produced < n:
            for event in self.session():
                if produced == n:
                    return
                produced += 1
                yield event

    def corrupt(self, event: Event, kind: str) -> bytes:
        """The event's wire form broken in the way ``kind`` names (see ``CORRUPTIONS``)."""
        broken = CORRUPTIONS[kind](json.loads(event.model_dump_json(exclude_none=True)))
        return broken if isinstance(broken, bytes) else json.dumps(broken).encode()
