"""Bucketing and assignment: uniform, stable across processes and languages, independent layers."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime, timedelta

import duckdb
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from abtest.assignment import assign, layer_salt
from abtest.bucketing import (
    BUCKETS,
    bucket,
    bucket_counts,
    empty_variants,
    expand,
    initial_allocation,
    ranges_size,
    reallocate,
    variant_of,
)
from abtest.experiment import Experiment, Variant
from abtest.registry import ExperimentError, ExperimentRegistry

START = datetime(2026, 11, 1, tzinfo=UTC)
salts = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=12)


def experiment(name: str, layer: str = "default", traffic: float = 1.0, **kw: object) -> Experiment:
    variants = kw.pop("variants", None) or (
        Variant(name="control", weight=1, model_version="v1"),
        Variant(name="treatment", weight=1, model_version="v2"),
    )
    return Experiment(name=name, layer=layer, traffic=traffic, variants=variants, start=START, **kw)


def test_bucket_is_md5_of_salt_colon_id() -> None:
    # A test vector for other services: `printf 'exp:u1' | md5sum` starts 59970967, and
    # 0x59970967 = 1503070567, which is bucket 567.
    assert bucket("exp", "u1") == 567


@settings(max_examples=3, deadline=None)
@given(salt=salts)
def test_buckets_are_uniform_over_a_million_ids(salt: str) -> None:
    counts = np.bincount([bucket(salt, f"user-{i}") for i in range(1_000_000)], minlength=BUCKETS)
    assert stats.chisquare(counts).pvalue > 1e-4


def test_duckdb_reproduces_the_bucket_of_every_user() -> None:
    ids = [f"user-{i}" for i in range(2000)] + ["ü-ñ", "x" * 128]
    expected = [bucket("exp-7", u) for u in ids]
    got = duckdb.sql(
        "SELECT ('0x' || md5('exp-7' || ':' || u)[1:8])::UBIGINT % 10000 FROM unnest($ids) t(u)",
        params={"ids": ids},
    ).fetchall()
    assert [row[0] for row in got] == expected


def test_buckets_are_stable_across_processes() -> None:
    ids = [f"user-{i}" for i in range(500)]
    code = "import sys; from abtest.bucketing import bucket; " + (
        "print(','.join(str(bucket('s', f'user-{i}')) for i in range(500)))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONHASHSEED": "123"},
    ).stdout
    assert [int(x) for x in out.strip().split(",")] == [bucket("s", u) for u in ids]


def test_two_layers_are_independent() -> None:
    ids = [f"user-{i}" for i in range(200_000)]
    first = np.array([bucket(layer_salt("ranking"), u) < 3000 for u in ids])
    second = np.array([bucket(layer_salt("pricing"), u) < 5000 for u in ids])
    table = np.array(
        [
            [np.sum(first & second), np.sum(first & ~second)],
            [np.sum(~first & second), np.sum(~first & ~second)],
        ]
    )
    assert stats.chi2_contingency(table).pvalue > 1e-3


def test_bucket_counts_sum_to_all_buckets_by_largest_remainder() -> None:
    assert bucket_counts({"a": 1, "b": 1, "c": 1}) == {"a": 3334, "b": 3333, "c": 3333}
    assert bucket_counts({"a": 0.9, "b": 0.1}) == {"a": 9000, "b": 1000}
    with pytest.raises(ValueError, match="weights"):
        bucket_counts({"a": 0, "b": 0})


weights = st.dictionaries(
    st.sampled_from(["a", "b", "c", "d"]), st.integers(1, 100), min_size=2, max_size=4
)


@given(old=weights, data=st.data())
def test_reallocation_moves_users_only_into_growing_variants(
    old: dict, data: st.DataObject
) -> None:
    new = {name: data.draw(st.integers(1, 100)) for name in old}
    before = initial_allocation(old)
    after = reallocate(before, new)
    targets = bucket_counts(new)
    assert {name: ranges_size(r) for name, r in after.items()} == targets
    old_owner = {b: name for name, r in before.items() for b in expand(r)}
    new_owner = {b: name for name, r in after.items() for b in expand(r)}
    assert sorted(new_owner) == list(range(BUCKETS))
    sizes_before = {name: ranges_size(r) for name, r in before.items()}
    for b, name in new_owner.items():
        if old_owner[b] != name:
            assert targets[name] > sizes_before[name], "a user moved into a variant that shrank"
            assert targets[old_owner[b]] < sizes_before[old_owner[b]]


def test_growing_the_treatment_keeps_everyone_already_in_it() -> None:
    before = initial_allocation({"control": 90, "treatment": 10})
    after = reallocate(before, {"control": 80, "treatment": 20})
    ids = [f"u{i}" for i in range(20_000)]
    moved = 0
    for u in ids:
        b = bucket("grow", u)
        was, now = variant_of(before, b), variant_of(after, b)
        assert not (was == "treatment" and now != "treatment")
        moved += was != now
    assert 0.08 < moved / len(ids) < 0.12


def test_changing_one_experiment_moves_no_user_of_another(tmp_path) -> None:
    registry = ExperimentRegistry(tmp_path)
    ranking = registry.create(experiment("ranking", layer="ranking"))
    other = registry.create(experiment("pricing", layer="pricing"))
    ids = [f"u{i}" for i in range(20_000)]
    before = [assign(other, u) for u in ids]
    ranking_before = [assign(ranking, u) for u in ids]
    registry.reweight("ranking", {"control": 1, "treatment": 3})
    ranking_after = [assign(registry.get("ranking"), u) for u in ids]
    moved = [u for u, was, now in zip(ids, ranking_before, ranking_after, strict=True)
             if was != now]  # fmt: skip
    # 1:1 to 1:3 moves a quarter of the users, all into the treatment...
    assert len(moved) / len(ids) == pytest.approx(0.25, abs=0.015)
    assert {ranking_after[ids.index(u)] for u in moved[:200]} == {"treatment"}
    # ...and whom it moves is independent of the other layer's variants.
    pricing_of_moved = [assign(other, u) for u in moved]
    share = pricing_of_moved.count("treatment") / len(moved)
    assert stats.binomtest(pricing_of_moved.count("treatment"), len(moved)).pvalue > 1e-3, share
    registry.stop("ranking")
    later = datetime.now(UTC) + timedelta(days=15)
    registry.create(experiment("ranking-2", layer="ranking", salt="new-salt"), now=later)
    assert [assign(registry.get("pricing"), u) for u in ids] == before


def test_experiments_of_one_layer_exclude_each_other(tmp_path) -> None:
    registry = ExperimentRegistry(tmp_path)
    first = registry.create(experiment("first", traffic=0.3))
    second = registry.create(experiment("second", traffic=0.5))
    ids = [f"u{i}" for i in range(20_000)]
    in_first = {u for u in ids if assign(first, u)}
    in_second = {u for u in ids if assign(second, u)}
    assert not in_first & in_second
    assert len(in_first) / len(ids) == pytest.approx(0.3, abs=0.02)
    assert len(in_second) / len(ids) == pytest.approx(0.5, abs=0.02)
    with pytest.raises(ExperimentError, match=r"traffic: layer 'default' has 20.0% .* free"):
        registry.create(experiment("third", traffic=0.25))
    stopped = registry.stop("first").stopped_at
    # Its users carry its effect for a while: its buckets rest for the cooldown (14 days).
    with pytest.raises(ExperimentError, match=r"first \(30%, resting until .*\), second \(50%\)"):
        registry.create(experiment("third", traffic=0.25), now=stopped + timedelta(days=13.9))
    third = registry.create(experiment("third", traffic=0.25), now=stopped + timedelta(days=14))
    assert third.layer_ranges[0][0] == 0
    quick = ExperimentRegistry(tmp_path, bucket_cooldown=timedelta(0))
    assert quick.create(experiment("fourth", traffic=0.05)).layer_ranges == ((2500, 3000),)


def test_an_ended_experiment_rests_from_its_end(tmp_path) -> None:
    registry = ExperimentRegistry(tmp_path, bucket_cooldown=timedelta(days=2))
    registry.create(experiment("ended", end=START + timedelta(days=7)), now=START)
    late = START + timedelta(days=8, hours=23)
    with pytest.raises(ExperimentError, match="resting until 2026-11-10 00:00 UTC"):
        registry.create(experiment("next"), now=late)
    assert registry.create(experiment("next"), now=START + timedelta(days=9)).layer_ranges == (
        (0, BUCKETS),
    )


def test_registry_refuses_a_duplicate_and_names_the_unknown(tmp_path) -> None:
    registry = ExperimentRegistry(tmp_path)
    registry.create(experiment("exp"))
    with pytest.raises(ExperimentError, match="name: an experiment named 'exp' exists"):
        registry.create(experiment("exp"))
    with pytest.raises(ExperimentError, match=r"no experiment named 'nope' \(known: exp\)"):
        registry.get("nope")
    assert [e.name for e in ExperimentRegistry(tmp_path).list()] == ["exp"]
    broken = tmp_path / "experiments" / "broken.json"
    broken.write_text(
        experiment("broken")
        .model_dump_json()
        .replace('"sequential_tau":0.02', '"sequential_tau":null')
    )
    with pytest.raises(
        ExperimentError, match=r"broken\.json: not a valid experiment \(sequential_tau: "
    ):
        ExperimentRegistry(tmp_path).list()
    broken.unlink()
    (tmp_path / "outside.json").write_text("{}")
    with pytest.raises(ExperimentError, match=r"name: '\.\./outside' is not an experiment"):
        ExperimentRegistry(tmp_path).get("../outside")  # tmp_path/outside.json


def test_configuration_errors_name_the_field() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="end"):
        experiment("e", end=START)
    with pytest.raises(ValidationError, match="variants"):
        experiment("e", variants=(Variant(name="a", weight=1, model_version="v"),) * 2)
    with pytest.raises(ValidationError, match="weight"):
        Variant(name="a", weight=-1, model_version="v")


@pytest.mark.parametrize(
    ("settings", "field", "reason"),
    [
        # An infinity was saved as null, and then no experiment of the store would load.
        ({"sequential_tau": float("inf")}, "sequential_tau", "a finite number"),
        ({"sequential_tau": 1e300}, "sequential_tau", "less than or equal to 10"),
        ({"pre_period_days": 1e9}, "pre_period_days", "less than or equal to 3650"),
        ({"pre_period_days": float("nan")}, "pre_period_days", "a finite number"),
    ],
)
def test_settings_that_would_break_a_later_report_are_refused(
    settings: dict[str, float], field: str, reason: str
) -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match=rf"{field}\n  Input should be {reason}"):
        experiment("e", **settings)


def test_empty_variants_are_those_without_a_bucket() -> None:
    assert empty_variants({"a": ((0, 9_999),), "b": ((9_999, 10_000),), "c": ()}) == ["c"]
    assert empty_variants(initial_allocation({"a": 1e-300, "b": 1.0})) == ["a"]


def test_a_variant_that_would_get_no_bucket_is_refused() -> None:
    from pydantic import ValidationError

    tiny = (
        Variant(name="control", weight=1e-300, model_version="v1"),
        Variant(name="treatment", weight=1, model_version="v2"),
    )
    with pytest.raises(ValidationError, match="control would get none of the 10000 buckets"):
        experiment("e", variants=tiny)
    with pytest.raises(ValidationError, match="weight"):
        Variant(name="a", weight=float("inf"), model_version="v")
