"""The tuning search: dotted settings are applied (and refused by name), the defaults are the
first trial, and a real Ray Tune search on a local Ray ranks trials by the geometric mean of
their validation NDCG over the datasets."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from learner.hyperparameter_search import (
    OBJECTIVE,
    best_overrides,
    current_values,
    geometric_mean,
    run_search,
    with_overrides,
)
from learner.interactions_file import read_interactions
from learner.settings import LearnerSettings
from tests.test_offline_eval import TINY, write_interactions


def test_dotted_overrides_reach_the_learner_and_the_derivation() -> None:
    base = LearnerSettings.model_validate(TINY)
    settings, derive = with_overrides(
        base, {"ppo.kl_coef": 0.05, "backbone.n_embd": 64, "derive.prompt_length": 7}
    )
    assert (settings.ppo.kl_coef, settings.backbone.n_embd, derive.prompt_length) == (0.05, 64, 7)
    assert settings.supervised == base.supervised  # the rest as it was
    space = {"ppo.kl_coef": None, "derive.category_cap": None}
    assert with_overrides(base, current_values(space, base)) == (base, with_overrides(base, {})[1])
    with pytest.raises(KeyError, match=r"ppo\.kl_coeff: no such setting"):
        with_overrides(base, {"ppo.kl_coeff": 0.1})
    with pytest.raises(ValidationError, match="kl_coef"):
        with_overrides(base, {"ppo.kl_coef": -1.0})


def test_a_search_on_a_local_ray_scores_every_trial_on_validation(tmp_path: Path) -> None:
    from ray import tune

    datasets = {}
    for name, users in (("small", 24), ("smaller", 16)):
        write_interactions(tmp_path / f"{name}.csv", users=users)
        data = read_interactions(tmp_path / f"{name}.csv")
        datasets[name] = (data.ratings, data.catalogue)
    base = LearnerSettings.model_validate(TINY)
    space = {"ppo.kl_coef": tune.choice([0.5]), "derive.prompt_length": tune.choice([3])}
    record = run_search(datasets, tmp_path, 600, 2, base, space)
    defaults = {"ppo.kl_coef": 0.1, "derive.prompt_length": 20}
    assert record["defaults"] == defaults
    # The defaults, then one draw of the space; best first.
    trials = record["trials"]
    assert sorted(map(str, (t["settings"] for t in trials))) == sorted(
        map(str, (defaults, {"ppo.kl_coef": 0.5, "derive.prompt_length": 3}))
    )
    assert trials[0][OBJECTIVE] >= trials[1][OBJECTIVE]
    for t in trials:
        for policy in ("both", "sft"):
            per_dataset = [t[f"val_ndcg_{policy}_{name}"] for name in datasets]
            assert all(0 < v <= 1 for v in per_dataset)
            # the record rounds each figure to four digits
            assert t[f"val_ndcg_{policy}"] == pytest.approx(geometric_mean(per_dataset), abs=2e-4)
    assert record["best"] == trials[0]["settings"]
    assert best_overrides(record) == {
        k: v for k, v in trials[0]["settings"].items() if v != defaults[k]
    }
    assert json.loads((tmp_path / "search.json").read_text())["best"] == record["best"]


def test_the_geometric_mean_counts_a_relative_change_alike_on_each_dataset() -> None:
    assert geometric_mean([0.04, 0.25]) == pytest.approx(0.1)  # sqrt(0.01)
    # +10% on the small figure moves it as much as +10% on the large one
    assert geometric_mean([0.044, 0.25]) == pytest.approx(geometric_mean([0.04, 0.275]))
    assert geometric_mean([0.0, 0.3]) == 0.0
