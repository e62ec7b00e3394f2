"""Routing: a user's variant decides the version; precedence between experiments; production
for everyone else. And the popularity page the fallback and the popularity version serve."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from abtest.assignment import assign
from abtest.experiment import Experiment, Variant
from abtest.registry import ExperimentRegistry
from serving.popularity import popularity_page
from serving.routing import (
    Route,
    follow_aliases,
    route,
    serving_experiments,
    versions_to_serve,
)

NOW = datetime(2026, 12, 1, tzinfo=UTC)


def experiment(
    name: str, versions: tuple[str, str], layer: str = "default", **kw: object
) -> Experiment:
    return Experiment(
        name=name,
        layer=layer,
        variants=(
            Variant(name="control", weight=1, model_version=versions[0]),
            Variant(name="treatment", weight=1, model_version=versions[1]),
        ),
        start=kw.pop("start", NOW - timedelta(hours=1)),  # type: ignore[arg-type]
        **kw,  # type: ignore[arg-type]
    )


def test_every_user_gets_the_version_of_their_variant(tmp_path: Path) -> None:
    registry = ExperimentRegistry(tmp_path)
    exp = registry.create(experiment("pop-vs-llm", ("v1", "v2"), traffic=0.5))
    live = serving_experiments(registry.list(), NOW)
    counts = {"v1": 0, "v2": 0, "v9": 0}
    for n in range(2000):
        user = f"user{n}"
        got = route(user, live, "v9")
        variant = assign(exp, user)
        if variant is None:
            assert got == Route("v9")
        else:
            version = {"control": "v1", "treatment": "v2"}[variant]
            assert got == Route(version, "pop-vs-llm", variant)
        counts[got.version] += 1  # type: ignore[index]
    # Half the layer, split 50/50: about 500 / 500 / 1000 of 2000.
    assert 420 < counts["v1"] < 580 and 420 < counts["v2"] < 580 and 900 < counts["v9"] < 1100


def test_the_experiment_that_started_first_decides_between_layers(tmp_path: Path) -> None:
    registry = ExperimentRegistry(tmp_path)
    registry.create(experiment("late", ("v3", "v4"), layer="ranking"))
    registry.create(experiment("early", ("v1", "v2"), layer="page", start=NOW - timedelta(days=1)))
    live = serving_experiments(registry.list(), NOW)
    assert [e.name for e in live] == ["early", "late"]
    assert {route(f"u{n}", live, "v9").experiment for n in range(50)} == {"early"}


def test_experiments_not_started_stopped_or_ended_route_nobody(tmp_path: Path) -> None:
    registry = ExperimentRegistry(tmp_path)
    registry.create(experiment("future", ("v1", "v2"), start=NOW + timedelta(hours=1)))
    registry.create(experiment("ended", ("v3", "v4"), layer="b", start=NOW - timedelta(days=2),
                               end=NOW - timedelta(days=1)))  # fmt: skip
    registry.create(experiment("stopped", ("v5", "v6"), layer="c"))
    registry.stop("stopped", at=NOW - timedelta(minutes=1))
    assert serving_experiments(registry.list(), NOW) == []
    assert route("anyone", [], "v9") == Route("v9")
    assert route("anyone", [], None) == Route(None)


def test_versions_to_serve_are_production_and_every_variant() -> None:
    exps = [experiment("a", ("v1", "v2")), experiment("b", ("v2", "v3"), layer="x")]
    assert versions_to_serve(exps, "v7") == {"v1", "v2", "v3", "v7"}
    assert versions_to_serve([], None) == set()


def test_popularity_page_prefers_the_users_categories_then_fills_by_popularity() -> None:
    ranking = ["a", "b", "c", "d", "e", "f"]
    category = {"a": "x", "b": "y", "c": "x", "d": "y", "e": "x", "f": "z"}
    # Banned: a. Category y first (b, d), then the rest by rank (c, e).
    assert popularity_page(ranking, 4, {"a"}, ("y",), category) == ["b", "d", "c", "e"]
    assert popularity_page(ranking, 3, {"a", "b"}) == ["c", "d", "e"]
    assert popularity_page(ranking, 2, set(), ("x", "y"), category) == ["a", "b"]
    assert popularity_page(ranking, 9, {"f"}) == ["a", "b", "c", "d", "e"]  # fewer than k left


def test_a_variant_naming_an_alias_follows_what_it_points_at() -> None:
    exp = experiment("llm-vs-pop", ("v2", "production"))
    followed = follow_aliases(exp, {"production": "v7", "candidate": None})
    assert [v.model_version for v in followed.variants] == ["v2", "v7"]
    assert followed.allocation == exp.allocation  # the same users in the same variants
    nowhere = follow_aliases(experiment("x", ("candidate", "v1")), {"candidate": None})
    assert [v.model_version for v in nowhere.variants] == ["candidate", "v1"]
