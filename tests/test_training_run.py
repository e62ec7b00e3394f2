"""A training run in its directory: repeatable with fixed seeds, resumed from the stages it
has, refused when the settings or data changed, each stage's seconds recorded."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from learner.command_options import CommandError, train_or_refuse
from learner.interactions_file import read_interactions
from learner.pipeline import STAGE_SECONDS_FILE, train_all
from learner.ray_jobs import NotEnoughResources, StageFailed
from learner.settings import LearnerSettings
from learner.stages import RunMismatch
from streams.derive.derived_state import DeriveConfig
from streams.derive.training_snapshot import TrainingSnapshot, build_training_snapshot
from tests.test_offline_eval import TINY, write_interactions

torch.set_num_threads(1)


def tiny_snapshot(tmp_path: Path, users: int = 30) -> TrainingSnapshot:
    write_interactions(tmp_path / "ratings.csv", users=users)
    data = read_interactions(tmp_path / "ratings.csv")
    return build_training_snapshot(
        data.ratings, data.catalogue, DeriveConfig(prompt_length=5), data.given_splits
    )


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_a_run_is_repeatable_resumes_and_refuses_other_settings(tmp_path: Path) -> None:
    snapshot = tiny_snapshot(tmp_path)
    settings = LearnerSettings.model_validate(TINY)
    first = train_all(snapshot, settings, tmp_path / "a", ["sft", "both"])
    second = train_all(snapshot, settings, tmp_path / "b", ["sft", "both"])
    assert same_weights(first.reference, second.reference)
    assert same_weights(first.policies["both"], second.policies["both"])
    assert same_weights(first.reward_model, second.reward_model)
    assert not same_weights(first.reference, first.policies["both"])  # PPO moved the policy
    assert set(first.curves) == {"meta", "finetune", "reward", "ppo_both"}
    seconds_file = tmp_path / "a" / STAGE_SECONDS_FILE
    first_seconds = json.loads(seconds_file.read_text())
    assert set(first_seconds) == {"meta", "finetune", "reward", "ppo_both"}
    assert all(s > 0 for s in first_seconds.values())

    # A run stopped before its PPO stage: the earlier stages are kept, PPO alone is trained.
    shutil.rmtree(tmp_path / "a" / "policy_both")
    titles: list[str] = []
    resumed = train_all(snapshot, settings, tmp_path / "a", ["sft", "both"],
                        on_stage=lambda title: titles.append(title))  # fmt: skip
    assert titles == ["PPO (both)"]
    resumed_seconds = json.loads(seconds_file.read_text())
    assert resumed_seconds.keys() == first_seconds.keys()
    assert resumed_seconds["ppo_both"] != first_seconds["ppo_both"]  # retrained: timed again
    assert all(resumed_seconds[s] == first_seconds[s] for s in ("meta", "finetune", "reward"))
    assert same_weights(resumed.policies["both"], second.policies["both"])

    changed = LearnerSettings.model_validate(TINY | {"ppo": TINY["ppo"] | {"lr": 1e-3}})
    with pytest.raises(RunMismatch, match=r"settings.ppo.lr: 0.0001 then, 0.001 now"):
        train_all(snapshot, changed, tmp_path / "a", ["sft", "both"])
    with pytest.raises(RunMismatch, match=r"data: '[0-9a-f]{64}' then"):
        train_all(tiny_snapshot(tmp_path, users=20), settings, tmp_path / "a", ["sft"])


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (NotEnoughResources("ray.workers: 64 workers need a CPU each; the Ray cluster has 2"), 2),
        (RunMismatch("settings.ppo.lr: 0.0001 then, 0.001 now"), 2),
        (StageFailed("stage reward failed on Ray"), 1),
    ],
)
def test_a_run_that_cannot_start_exits_2_and_a_failed_stage_1(error: Exception, code: int) -> None:
    def train() -> None:
        raise error

    with pytest.raises(CommandError) as refused:
        train_or_refuse(train)
    assert (refused.value.code, str(refused.value)) == (code, str(error))
