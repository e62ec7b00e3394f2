"""A page's worth by the simulated users' ground truth: the plans every version is asked with,
and the ceiling that no page of allowed items exceeds."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pytest

from deploy.page_value import best_pages, bootstrap_plans, mean_expected_clicks
from deploy.simulated_users import Population, SimulatorSettings, build_population
from serving.served_versions import Fallback

NOW = datetime(2026, 12, 1, tzinfo=UTC)


@pytest.fixture(scope="module")
def population() -> Population:
    return build_population(SimulatorSettings(users=30, categories=4, items_per_category=10), NOW)


def test_a_plan_prompts_and_bans_exactly_the_users_liked_history(population: Population) -> None:
    plans = bootstrap_plans(population, k=5)
    assert [p.user_id for p in plans] == [u.user_id for u in population.users]
    for plan in plans:
        mine = sorted(
            (r for r in population.history if r.user_id == plan.user_id), key=lambda r: r.ts
        )
        liked = [r.item_id for r in mine if r.rating > 3]
        assert plan.positives == tuple(liked) and plan.banned == frozenset(liked)
        assert plan.k == 5


def test_no_page_of_allowed_items_is_worth_more_than_the_best(population: Population) -> None:
    plans = bootstrap_plans(population, k=5)
    best = best_pages(population, plans)
    ceiling, paged = mean_expected_clicks(population, best)
    assert paged == len(plans)
    rng = np.random.default_rng(0)
    items = population.catalogue.item_ids
    for _ in range(20):
        pages = [
            list(rng.choice([i for i in items if i not in p.banned], p.k, replace=False))
            for p in plans
        ]
        assert mean_expected_clicks(population, pages)[0] < ceiling
    for plan, page in zip(plans, best, strict=True):
        assert len(page) == 5 and not set(page) & plan.banned


def test_a_fallback_is_left_out_and_an_unknown_item_worth_nothing(population: Population) -> None:
    plans = bootstrap_plans(population, k=2)
    best = best_pages(population, plans)
    pages: list[list[str] | Fallback] = [Fallback("cold start")] + [list(p) for p in best[1:]]
    value, paged = mean_expected_clicks(population, pages)
    assert paged == len(plans) - 1
    unknown: list[list[str] | Fallback] = [Fallback("cold start")] + [
        ["not-an-item", p[1]] for p in best[1:]
    ]
    assert mean_expected_clicks(population, unknown)[0] < value
