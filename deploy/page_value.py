"""What a version's pages are worth to the simulated users, by their ground truth.

The A/B report measures a lift against the control with the noise of a few hundred users. The
simulator knows every user's utilities, so a policy's page has an exact worth: its expected
clicks under the choice model (``deploy.choice_model.expected_clicks``). Every user is asked for
one first page of ``k`` in the state the bootstrap left (the history's positives as the prompt
and as the bans), by every registered version, by the fine-tuned reference of one that serves
PPO's policy (what its PPO started from), and by the best ``k`` items by true utility (the
ceiling no policy exceeds).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from statistics import fmean

import torch

from deploy.choice_model import expected_clicks
from deploy.simulated_users import Population
from learner.registry import ModelRegistry
from learner.version_eval import REFERENCE
from serving.served_versions import (
    Fallback,
    LearnedVersion,
    PagePlan,
    ServedVersion,
    load_served_version,
    snapshot_prompt_length,
)
from streams.derive.feedback_ratings import is_positive

BATCH = 64  # plans a version writes pages for at once


def bootstrap_plans(population: Population, k: int) -> list[PagePlan]:
    """One plan per user: their history's positives (r > 3, oldest first), all of them banned."""
    liked: dict[str, list[str]] = defaultdict(list)
    for rating in sorted(population.history, key=lambda r: r.ts):
        if is_positive(rating.rating):
            liked[rating.user_id].append(rating.item_id)
    return [
        PagePlan(u.user_id, tuple(liked[u.user_id]), frozenset(liked[u.user_id]), k)
        for u in population.users
    ]


def best_pages(population: Population, plans: Sequence[PagePlan]) -> list[list[str]]:
    """Per plan, its k allowed items of highest true utility, best first."""
    items = population.catalogue.item_ids
    pages = []
    for user, plan in zip(population.users, plans, strict=True):
        utility = population.utilities(user)
        allowed = [n for n, item in enumerate(items) if item not in plan.banned]
        pages.append([items[n] for n in sorted(allowed, key=lambda n: -utility[n])[: plan.k]])
    return pages


def mean_expected_clicks(
    population: Population, pages: Sequence[list[str] | Fallback]
) -> tuple[float, int]:
    """(mean expected clicks over the users that got a page, how many did); pages[n] is user n's."""
    s, index = population.settings, population.index
    worth = []
    for user, page in zip(population.users, pages, strict=True):
        if isinstance(page, Fallback):
            continue
        utility = population.utilities(user)
        slots = [float(utility[index[i]]) if i in index else None for i in page]
        worth.append(expected_clicks(slots, s.position_eta, s.click_bias))
    return (fmean(worth) if worth else 0.0), len(worth)


@torch.no_grad()
def pages_of(served: ServedVersion, plans: Sequence[PagePlan]) -> list[list[str] | Fallback]:
    out: list[list[str] | Fallback] = []
    for start in range(0, len(plans), BATCH):
        out += served.pages(plans[start : start + BATCH])
    return out


def version_page_values(store: Path, population: Population, k: int) -> dict[str, float]:
    """Mean expected clicks of a first page: the best pages, then each version (one serving
    PPO's policy also as ``<version>_reference``). A version that could not page every user
    (cold start, too few items left) is valued over those it paged, their count as
    ``<name>_users``."""
    plans = bootstrap_plans(population, k)
    best, _ = mean_expected_clicks(population, best_pages(population, plans))
    values: dict[str, float] = {"best_by_true_utility": best}
    registry = ModelRegistry.for_store(store)
    for record in registry.versions():
        served: list[tuple[str, ServedVersion]] = [
            (record.version, load_served_version(registry, store, record.version))
        ]
        if record.kind == "pagellm" and record.ablation != "sft":  # sft serves the reference
            length = snapshot_prompt_length(store, record.snapshot_id)
            model_dir = registry.model_dir(record.version)
            reference = LearnedVersion(record, model_dir, length, policy=REFERENCE)
            served.append((f"{record.version}_reference", reference))
        for name, version in served:
            values[name], paged = mean_expected_clicks(population, pages_of(version, plans))
            if paged < len(plans):
                values[f"{name}_users"] = paged
    return {name: round(value, 4) for name, value in values.items()}
