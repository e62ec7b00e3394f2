"""The simulated world: a catalogue and users with hidden tastes, and their history before the
platform starts (what the bootstrap imports).

Synthetic by default: C categories of items, each item with a quality ~ N(0, quality_sd) and a
log-normal price; each user with category affinities ~ Dirichlet(affinity_concentration) (small
values: a few favourite categories), a log-normal price point and per-session budget, and an
activity weight ~ Gamma(2). A user's history is ``history_min``..``history_max`` items drawn
without replacement with probability proportional to exp(utility) (people meet what they like
more often) and rated by ``choice_model.rating_of``.

From a ratings file (``ratings_path``: MovieLens 100k's directory, or a generic CSV) the tastes
come from the file instead: a user's affinity for a category is their positives in it plus the
concentration, normalised; an item's quality is its mean rating, shrunk towards the global mean
by five pseudo-ratings and standardised; prices are the file's or drawn as above. The history is
the file's ratings themselves.

The same settings and seed give the same world (numpy's generator, seeded once).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from deploy.choice_model import rating_of, utilities
from schemas import Rating
from schemas.catalogue import CatalogueItem
from streams.ingest.dataset_import import BadRow, DatasetReader

SHRINK_RATINGS = 5.0  # pseudo-ratings at the global mean in a file item's quality


class SimulatorSettings(BaseSettings):
    """The simulated users and their choice model (``PAGELLM_SIM_*``)."""

    model_config = SettingsConfigDict(env_prefix="PAGELLM_SIM_", extra="ignore")

    seed: int = Field(7, description="the same seed gives the same users, items and history")
    ratings_path: Path | None = Field(None, description="tastes and history from this file")
    ratings_format: Literal["movielens", "generic", "amazon"] = "movielens"
    users: int = Field(400, ge=2, description="synthetic users")
    categories: int = Field(8, ge=2, description="synthetic categories")
    items_per_category: int = Field(25, ge=2)
    affinity_concentration: float = Field(
        0.3, gt=0, description="Dirichlet parameter of a user's category affinities"
    )
    quality_sd: float = Field(0.7, ge=0, description="sd of an item's quality")
    price_median: float = Field(20.0, gt=0, description="median item price (EUR)")
    price_log_sd: float = Field(0.6, ge=0)
    price_point_median: float = Field(30.0, gt=0, description="median user price point")
    budget_median: float = Field(60.0, gt=0, description="median spend a session allows")
    history_min: int = Field(25, ge=1, description="items a synthetic user rated before")
    history_max: int = Field(45, ge=1)
    history_days: float = Field(30.0, gt=0, description="the history spans this many days")
    w_cat: float = Field(1.0, ge=0, description="weight of category affinity in the utility")
    w_quality: float = Field(1.0, ge=0, description="weight of item quality")
    w_price: float = Field(1.0, ge=0, description="weight of a price above the price point")
    click_bias: float = Field(-1.5, description="shifts every click's attraction")
    rating_bias: float = Field(0.0, description="shifts every rating of the history")
    buy_bias: float = Field(-1.0, description="shifts every purchase's probability")
    position_eta: float = Field(1.0, ge=0, description="examination theta_k = k ** -eta")
    page_size: int = Field(10, ge=1, le=100, description="items a page request asks for")
    more_pages: float = Field(
        0.5, ge=0, le=1, description="chance a session asks for one more page"
    )
    max_pages: int = Field(3, ge=1, description="pages a session asks for at most")
    clients: int = Field(4, ge=1, description="sessions in flight at once")


@dataclass(frozen=True)
class Catalogue:
    item_ids: list[str]
    category_names: list[str]
    item_category: np.ndarray  # index into category_names, per item
    quality: np.ndarray
    prices: np.ndarray

    def items(self) -> list[CatalogueItem]:
        return [
            CatalogueItem(
                item_id=item,
                category=self.category_names[int(c)],
                price=Decimal(f"{price:.2f}"),
            )
            for item, c, price in zip(self.item_ids, self.item_category, self.prices, strict=True)
        ]


@dataclass(frozen=True)
class SimulatedUser:
    user_id: str
    affinities: np.ndarray  # over categories, sums to 1
    price_point: float
    budget: float
    activity: float


class Population:
    """The catalogue and the users; ``utilities(user)`` is their ground truth."""

    def __init__(
        self,
        catalogue: Catalogue,
        users: list[SimulatedUser],
        settings: SimulatorSettings,
        history: list[Rating],
    ) -> None:
        self.catalogue, self.users, self.settings = catalogue, users, settings
        self.history = history
        self.index = {item: n for n, item in enumerate(catalogue.item_ids)}
        self._utilities: dict[str, np.ndarray] = {}

    def utilities(self, user: SimulatedUser) -> np.ndarray:
        """s(u, i) for every item (cached: the tastes do not change)."""
        if user.user_id not in self._utilities:
            s, c = self.settings, self.catalogue
            self._utilities[user.user_id] = utilities(
                user.affinities,
                c.item_category,
                c.quality,
                c.prices,
                user.price_point,
                s.w_cat,
                s.w_quality,
                s.w_price,
            )
        return self._utilities[user.user_id]

    def activity_weights(self) -> np.ndarray:
        weights = np.array([u.activity for u in self.users])
        return weights / weights.sum()


def _lognormal(rng: np.random.Generator, median: float, log_sd: float, n: int) -> np.ndarray:
    return np.round(median * np.exp(rng.normal(0.0, log_sd, n)), 2).clip(min=0.01)


def _users(
    ids: list[str], affinities: np.ndarray, settings: SimulatorSettings, rng: np.random.Generator
) -> list[SimulatedUser]:
    n = len(ids)
    price_points = _lognormal(rng, settings.price_point_median, 0.5, n)
    budgets = _lognormal(rng, settings.budget_median, 0.5, n)
    activity = rng.gamma(2.0, 0.5, n)
    return [
        SimulatedUser(ids[k], affinities[k], float(price_points[k]), float(budgets[k]), activity[k])
        for k in range(n)
    ]


def synthetic_population(settings: SimulatorSettings, now: datetime) -> Population:
    """A generated catalogue, users and their history (see the module docstring)."""
    rng = np.random.default_rng(settings.seed)
    c, per = settings.categories, settings.items_per_category
    catalogue = Catalogue(
        item_ids=[f"item{n}" for n in range(c * per)],
        category_names=[f"cat{k}" for k in range(c)],
        item_category=np.repeat(np.arange(c), per),
        quality=rng.normal(0.0, settings.quality_sd, c * per),
        prices=_lognormal(rng, settings.price_median, settings.price_log_sd, c * per),
    )
    ids = [f"user{n}" for n in range(settings.users)]
    affinities = rng.dirichlet(np.full(c, settings.affinity_concentration), len(ids))
    # Dirichlet draws can underflow to 0; log(0) would make an item unthinkable, not unlikely.
    affinities = np.maximum(affinities, 1e-4)
    affinities /= affinities.sum(axis=1, keepdims=True)
    users = _users(ids, affinities, settings, rng)
    population = Population(catalogue, users, settings, [])
    population.history.extend(_synthetic_history(population, rng, now))
    return population


def _synthetic_history(
    population: Population, rng: np.random.Generator, now: datetime
) -> Iterator[Rating]:
    s, items = population.settings, population.catalogue.item_ids
    span = timedelta(days=s.history_days)
    for user in population.users:
        u = population.utilities(user)
        weights = np.exp(u - u.max())
        n = int(rng.integers(s.history_min, min(s.history_max, len(items)) + 1))
        chosen = rng.choice(
            len(items), size=min(n, len(items)), replace=False, p=weights / weights.sum()
        )
        offsets = np.sort(rng.uniform(0.0, 1.0, len(chosen)))
        for k, (item, at) in enumerate(zip(chosen, offsets, strict=True)):
            yield Rating(
                type="rating",
                event_id=f"sim-history-{s.seed}-{user.user_id}-{k}",
                user_id=user.user_id,
                session_id=f"sim-history-{user.user_id}",
                ts=now - span + at * span,
                item_id=items[int(item)],
                rating=rating_of(float(u[item]), s.rating_bias),
            )


def population_from_ratings(settings: SimulatorSettings) -> Population:
    """Tastes and history from ``settings.ratings_path`` (see the module docstring)."""
    assert settings.ratings_path is not None
    reader = DatasetReader(settings.ratings_format, settings.ratings_path)
    history = [row.event for row in reader.ratings() if not isinstance(row, BadRow)]
    if not history:
        raise ValueError(f"ratings_path: {settings.ratings_path} holds no valid rating")
    rng = np.random.default_rng(settings.seed)
    rated = sorted({r.item_id for r in history})
    names = sorted({reader.catalogue[i].category for i in rated if i in reader.catalogue}) or [
        "unknown"
    ]
    category_index = {name: k for k, name in enumerate(names)}

    def category_of(item: str) -> int:
        known = reader.catalogue.get(item)
        return category_index[known.category] if known else 0

    item_category = np.array([category_of(i) for i in rated])
    position = {item: n for n, item in enumerate(rated)}
    ratings_of: dict[str, list[int]] = defaultdict(list)
    positives = defaultdict(lambda: np.zeros(len(names)))
    for r in history:
        ratings_of[r.item_id].append(r.rating)
        if r.rating > 3:
            positives[r.user_id][item_category[position[r.item_id]]] += 1
    mean = float(np.mean([r.rating for r in history]))
    shrunk = np.array(
        [(sum(ratings_of[i]) + SHRINK_RATINGS * mean) / (len(ratings_of[i]) + SHRINK_RATINGS)
         for i in rated]
    )  # fmt: skip
    quality = (shrunk - shrunk.mean()) / (shrunk.std() or 1.0)
    drawn = _lognormal(rng, settings.price_median, settings.price_log_sd, len(rated))
    prices = np.array(
        [float(reader.catalogue[i].price or drawn[n]) if i in reader.catalogue else drawn[n]
         for n, i in enumerate(rated)]
    )  # fmt: skip
    catalogue = Catalogue(rated, names, item_category, quality * settings.quality_sd, prices)
    ids = sorted({r.user_id for r in history})
    counts = np.array([positives[u] for u in ids]) + settings.affinity_concentration
    affinities = counts / counts.sum(axis=1, keepdims=True)
    return Population(catalogue, _users(ids, affinities, settings, rng), settings, history)


def build_population(settings: SimulatorSettings, now: datetime) -> Population:
    if settings.history_min > settings.history_max:
        raise ValueError("history_min: must be at most history_max")
    if settings.ratings_path is not None:
        return population_from_ratings(settings)
    return synthetic_population(settings, now)
