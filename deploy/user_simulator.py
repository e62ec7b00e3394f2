"""Simulated traffic: users open sessions, ask the page API for pages over HTTP, and click and
buy by the choice model (``deploy.choice_model``); their clicks and purchases go to Kafka.

Serving writes the impressions itself, so the store holds what a real shop's would. The
population's ground truth decides every click and purchase; nothing the platform computes is
consulted. Each client thread draws from its own generator (seeded by the seed and the thread),
so the users and their tastes repeat exactly for a seed; which page a user gets depends on
what the platform serves at that moment, which is the point.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal

import httpx
import numpy as np

from deploy.choice_model import click_probability, purchase_probability
from deploy.simulated_users import Population, SimulatedUser
from schemas import Click, Purchase
from schemas.page_api import PageResponse
from streams.ingest.producer import EventProducer

log = logging.getLogger(__name__)


@dataclass
class Tally:
    """What one variant's users did (the simulator's own view, not the A/B report's)."""

    pages: int = 0
    clicks: int = 0
    purchases: int = 0
    gmv: float = 0.0
    users: set[str] = field(default_factory=set)  # shown at least one page

    @property
    def ctr(self) -> float:
        return self.clicks / self.pages if self.pages else 0.0


@dataclass
class TrafficLog:
    """Counters shared by the client threads, and when each feedback event was produced."""

    tallies: dict[str, Tally] = field(default_factory=lambda: defaultdict(Tally))
    produced_at: dict[str, float] = field(default_factory=dict)  # event id -> unix time
    sessions: int = 0
    failed_requests: int = 0
    exhausted: int = 0  # page requests refused because the user had nothing left to be shown
    last_error: str = ""
    lock: threading.Lock = field(default_factory=threading.Lock)


class UserSimulator:
    """``clients`` threads, each running one session after another until ``stop`` is set."""

    def __init__(self, population: Population, page_url: str, producer: EventProducer) -> None:
        self.population, self.page_url, self.producer = population, page_url, producer
        self.settings = population.settings
        self.log = TrafficLog()
        self.weights = population.activity_weights()

    def run(self, stop: threading.Event) -> None:
        """Blocks until ``stop`` is set and every client has finished its session."""
        threads = [
            threading.Thread(target=self._client, args=(n, stop), name=f"sim-client-{n}")
            for n in range(self.settings.clients)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    def _client(self, n: int, stop: threading.Event) -> None:
        rng = np.random.default_rng([self.settings.seed, n])
        with httpx.Client(timeout=30.0) as client:
            sessions = 0
            while not stop.is_set():
                user = self.population.users[rng.choice(len(self.weights), p=self.weights)]
                ok = self.session(client, user, f"sim-{self.settings.seed}-{n}-{sessions}", rng)
                sessions += 1
                if not ok:  # the server is down or refusing: back off instead of spinning
                    stop.wait(1.0)

    def session(
        self, client: httpx.Client, user: SimulatedUser, session_id: str, rng: np.random.Generator
    ) -> bool:
        """One session of up to ``max_pages`` pages; False when a page request failed."""
        s = self.settings
        utility = self.population.utilities(user)
        budget_left, shown = user.budget, []
        with self.log.lock:
            self.log.sessions += 1
        for _ in range(s.max_pages):
            request = {"user_id": user.user_id, "session_id": session_id, "k": s.page_size}
            try:
                answer = client.post(self.page_url, json=request | {"exclude": shown})
                if answer.status_code == 422 and "items are left" in answer.text:
                    with self.log.lock:  # this user has been shown all there is: session over
                        self.log.exhausted += 1
                    return True
                answer.raise_for_status()
            except httpx.HTTPError as exc:
                with self.log.lock:
                    self.log.failed_requests += 1
                    self.log.last_error = f"{type(exc).__name__}: {exc}"
                return False
            page = PageResponse.model_validate_json(answer.content)
            budget_left = self._react(user, session_id, page, utility, budget_left, rng)
            shown += [slot.item_id for slot in page.items]
            if rng.random() >= s.more_pages:
                break
        return True

    def _react(
        self,
        user: SimulatedUser,
        session_id: str,
        page: PageResponse,
        utility: np.ndarray,
        budget_left: float,
        rng: np.random.Generator,
    ) -> float:
        """Click and buy on one page; returns the budget left."""
        s, catalogue, index = self.settings, self.population.catalogue, self.population.index
        tally = Tally(pages=1)
        for slot in page.items:
            item = index.get(slot.item_id)
            if item is None:  # an item the world does not know holds no appeal
                continue
            u = float(utility[item])
            if rng.random() >= click_probability(u, slot.position, s.position_eta, s.click_bias):
                continue
            common = {"user_id": user.user_id, "session_id": session_id, "ts": datetime.now(UTC)}
            suffix = f"{page.request_id}-{slot.position}"
            self._send(
                Click(
                    type="click",
                    event_id=f"sim-click-{suffix}",
                    request_id=page.request_id,
                    item_id=slot.item_id,
                    position=slot.position,
                    **common,
                )
            )
            tally.clicks += 1
            price = float(catalogue.prices[item])
            if rng.random() < purchase_probability(u, price, budget_left, s.buy_bias):
                budget_left -= price
                self._send(
                    Purchase(
                        type="purchase",
                        event_id=f"sim-buy-{suffix}",
                        item_id=slot.item_id,
                        quantity=1,
                        unit_price=Decimal(f"{price:.2f}"),
                        currency="EUR",
                        request_id=page.request_id,
                        **common,
                    )
                )
                tally.purchases += 1
                tally.gmv += price
        with self.log.lock:
            total = self.log.tallies[page.variant or page.model_version]
            total.pages += tally.pages
            total.clicks += tally.clicks
            total.purchases += tally.purchases
            total.gmv += tally.gmv
            total.users.add(user.user_id)
        return budget_left

    def _send(self, event: Click | Purchase) -> None:
        self.producer.send(event)
        with self.log.lock:
            self.log.produced_at[event.event_id] = time.time()
