"""Tuning on validation only: a Ray Tune random search over the settings that matter.

A trial trains ``sft`` and ``both`` with its settings (the derivation's too: prompt length
and category cap change the training data) on each dataset and reports both policies'
validation NDCG@100 per dataset. The objective is the geometric mean of ``both``'s over the
datasets, so that a relative gain counts the same on each: a search on dense histories alone
chose settings that cost short histories 29-43%. A trial never reads a test item, so the test
split stays for the one benchmark that reads it.
Trials run in parallel, a CPU each, until the sample count or the time budget is spent; the
defaults are always the first trial, so the search says whether anything beat them.
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from learner.offline_eval import recommend, relevance_metrics
from learner.pipeline import train_all
from learner.ray_jobs import ray_init_options
from learner.settings import LearnerSettings
from schemas import CatalogueItem
from schemas.training_data import EffectiveRating
from streams.derive.derived_state import DeriveConfig
from streams.derive.training_snapshot import build_training_snapshot

OBJECTIVE = "val_ndcg_both"
POLICIES = ("both", "sft")
Ratings = Mapping[str, Mapping[str, EffectiveRating]]
Dataset = tuple[Ratings, Mapping[str, CatalogueItem]]  # ratings and catalogue


def search_space() -> dict[str, Any]:
    """Dotted setting -> its distribution: ``derive.`` keys are ``DeriveConfig``'s, the
    others ``LearnerSettings``'."""
    from ray import tune

    return {
        "supervised.meta_lr": tune.loguniform(1e-5, 1e-3),
        "supervised.meta_epochs": tune.choice([3, 6, 10]),
        "supervised.meta_shuffled_windows": tune.choice([0, 4, 16]),
        "supervised.finetune_lr": tune.loguniform(1e-5, 1e-3),
        "supervised.page_set_weight": tune.choice([0.0, 1.0, 3.0]),
        "backbone.n_embd": tune.choice([64, 128, 256]),
        "reward.lr": tune.loguniform(1e-5, 1e-3),
        "reward.epochs": tune.choice([5, 10]),
        "ppo.lr": tune.loguniform(3e-6, 1e-4),
        "ppo.kl_coef": tune.choice([0.02, 0.05, 0.1, 0.2]),
        "derive.prompt_length": tune.choice([10, 20, 30]),
        "derive.category_cap": tune.choice([0.3, 0.4, 0.5, 1.0]),
    }


def settings_tree(base: LearnerSettings) -> dict[str, Any]:
    """``base`` as nested dicts, with the default ``DeriveConfig`` under ``derive``: the tree
    the dotted keys of the search name."""
    return base.model_dump() | {"derive": DeriveConfig().model_dump()}


def parent_of(tree: dict[str, Any], key: str) -> tuple[dict[str, Any], str]:
    """(the dict holding dotted ``key``'s setting, its last part); KeyError naming ``key``."""
    *path, leaf = key.split(".")
    node = tree
    for part in path:
        node = node.get(part) if isinstance(node, dict) else None
    if not isinstance(node, dict) or leaf not in node:
        raise KeyError(f"{key}: no such setting")
    return node, leaf


def current_values(space: Mapping[str, Any], base: LearnerSettings) -> dict[str, Any]:
    """The value each searched setting has now (``base`` and ``DeriveConfig``'s defaults)."""
    tree = settings_tree(base)
    values = {}
    for key in space:
        node, leaf = parent_of(tree, key)
        values[key] = node[leaf]
    return values


def with_overrides(
    base: LearnerSettings, overrides: Mapping[str, Any]
) -> tuple[LearnerSettings, DeriveConfig]:
    """``base`` and the default ``DeriveConfig`` with each dotted override set (validated: a
    misspelt or out-of-range setting is an error naming it)."""
    tree = settings_tree(base)
    for key, value in overrides.items():
        node, leaf = parent_of(tree, key)
        node[leaf] = value
    derive = tree.pop("derive")
    return LearnerSettings.model_validate(tree), DeriveConfig.model_validate(derive)


def validation_scores(
    ratings: Ratings,
    catalogue: Mapping[str, CatalogueItem],
    settings: LearnerSettings,
    derive: DeriveConfig,
    run_dir: Path,
) -> dict[str, float]:
    """Train sft and both in ``run_dir`` (this process) and score them on validation items."""
    snapshot = build_training_snapshot(dict(ratings), dict(catalogue), derive)
    models = train_all(snapshot, settings, run_dir, list(POLICIES))
    users = sorted(snapshot.validation)
    scores = {}
    for ablation in POLICIES:
        lists = recommend(
            models.policies[ablation], models.vocab, snapshot, users, for_validation=True
        )
        scores[f"val_ndcg_{ablation}"] = relevance_metrics(lists, snapshot.validation)["ndcg@100"]
    return scores


def geometric_mean(values: Sequence[float]) -> float:
    """(prod v_d)^(1/D): a relative change of any one value moves it alike (0 if any is 0,
    which the standard library's refuses: a collapsed policy scores 0, not an error)."""
    return 0.0 if any(v <= 0 for v in values) else statistics.geometric_mean(values)


def _trial(config: dict[str, Any], datasets: Mapping[str, Dataset], base: LearnerSettings) -> None:
    from ray import tune

    torch.set_num_threads(1)  # one CPU per trial
    started = time.monotonic()
    settings, derive = with_overrides(base, config)
    scores = {}
    for name, (ratings, catalogue) in datasets.items():
        with tempfile.TemporaryDirectory(prefix="pagellm-trial-") as run_dir:
            by_policy = validation_scores(ratings, catalogue, settings, derive, Path(run_dir))
        scores |= {f"{key}_{name}": value for key, value in by_policy.items()}
    for policy in POLICIES:
        key = f"val_ndcg_{policy}"
        scores[key] = geometric_mean([scores[f"{key}_{name}"] for name in datasets])
    tune.report(scores | {"trial_s": time.monotonic() - started})


def run_search(
    datasets: Mapping[str, Dataset],
    out: Path,
    budget_s: float,
    samples: int,
    base: LearnerSettings | None = None,
    space: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The search's record (written to ``out/search.json``): every trial's settings and
    scores (per dataset and their geometric means), best first, and the best trial's settings."""
    from ray import tune

    base = base or LearnerSettings(ray={"workers": 1})
    space = dict(space or search_space())
    defaults = current_values(space, base)
    trainable = tune.with_resources(
        tune.with_parameters(_trial, datasets=dict(datasets), base=base),
        {"cpu": 1},
    )
    tuner = tune.Tuner(
        trainable,
        param_space=space,
        tune_config=tune.TuneConfig(
            metric=OBJECTIVE,
            mode="max",
            num_samples=samples,
            time_budget_s=budget_s,
            search_alg=tune.search.BasicVariantGenerator(
                points_to_evaluate=[defaults], random_state=0
            ),
        ),
        run_config=tune.RunConfig(
            name="tune-quality", storage_path=str((out / "ray").resolve()), verbose=1
        ),
    )
    import ray

    # The cluster the settings name (or a local Ray, stopped when the search ends).
    started_ray = not ray.is_initialized()
    if started_ray:
        ray.init(**ray_init_options(base.ray))
    try:
        results = tuner.fit()
    finally:
        if started_ray:
            ray.shutdown()
    trials = []
    for result in results:
        if result.error is not None:
            trials.append({"settings": result.config, "error": str(result.error)})
            continue
        if OBJECTIVE not in (result.metrics or {}):
            trials.append({"settings": result.config, "stopped": "not finished within the budget"})
            continue
        metrics = result.metrics
        scores = {k: round(v, 4) for k, v in metrics.items() if k.startswith("val_ndcg_")}
        trials.append(
            {"settings": result.config} | scores | {"trial_s": round(metrics["trial_s"], 1)}
        )
    scored = sorted((t for t in trials if OBJECTIVE in t), key=lambda t: t[OBJECTIVE], reverse=True)
    record = {
        "objective": f"{OBJECTIVE}: the geometric mean over {', '.join(datasets)} of the "
        "both policy's validation NDCG@100",
        "budget_s": budget_s,
        "samples": samples,
        "defaults": defaults,
        "best": scored[0]["settings"] if scored else None,
        "trials": scored + [t for t in trials if OBJECTIVE not in t],
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "search.json").write_text(json.dumps(record, indent=1, default=str))
    return record


def best_overrides(record: Mapping[str, Any]) -> dict[str, Any]:
    """The best trial's settings that differ from the defaults (nothing when they won)."""
    best = record.get("best") or {}
    return {k: v for k, v in best.items() if v != record["defaults"][k]}
