"""Which version serves a user: the version of their variant in a running experiment, else
production. A pure function of the experiments, the production version and the user id.

A variant may name a registry alias instead of a version: ``production`` follows every
promotion (a retrain that passes its gates reaches that variant's users at the next refresh),
``candidate`` the newest waiting candidate. Impressions name the version that served.

A user can be in one experiment per layer. Only one version can write a page, so when a user is
in several running experiments the one that started first decides (ties: by name); the page's
impression names that experiment, so its report counts the user and the others' do not.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from abtest.assignment import assign
from abtest.experiment import Experiment


@dataclass(frozen=True)
class Route:
    version: str | None
    experiment: str | None = None
    variant: str | None = None


def serving_experiments(experiments: Sequence[Experiment], now: datetime) -> list[Experiment]:
    """Experiments that route traffic now (started, not stopped, not ended), in the order that
    decides between them: earliest start first, then name."""
    live = [e for e in experiments if e.start <= now and e.is_running(now)]
    return sorted(live, key=lambda e: (e.start, e.name))


def follow_aliases(experiment: Experiment, aliases: Mapping[str, str | None]) -> Experiment:
    """The experiment with each variant naming an alias (``production``, ``candidate``) given
    the version the alias points at now; an alias that points nowhere stays as named."""
    variants = tuple(
        v.model_copy(update={"model_version": aliases.get(v.model_version) or v.model_version})
        for v in experiment.variants
    )
    return experiment.model_copy(update={"variants": variants})


def route(user_id: str, experiments: Sequence[Experiment], production: str | None) -> Route:
    """The first of ``experiments`` (already ordered) that holds the user, else production."""
    for experiment in experiments:
        variant = assign(experiment, user_id)
        if variant is not None:
            version = next(v.model_version for v in experiment.variants if v.name == variant)
            return Route(version, experiment.name, variant)
    return Route(production)


def versions_to_serve(experiments: Sequence[Experiment], production: str | None) -> set[str]:
    """Every version a request may be routed to."""
    named = {v.model_version for e in experiments for v in e.variants}
    return named | ({production} if production else set())
