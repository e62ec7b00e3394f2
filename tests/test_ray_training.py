"""The training stages on a local Ray: on one warm worker reproducing the in-process stage
exactly, job after job, and as Ray Train jobs on two data-parallel workers through
``pagellm eval`` joining the cluster by its address.

A TorchTrainer job costs seconds to start, so the Ray path is exercised here and nowhere else.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from learner.artifacts import load_policy
from learner.pipeline import train_all
from learner.ray_jobs import NotEnoughResources, RayStageRunner, ray_init_options
from learner.settings import LearnerSettings, RaySettings
from tests.test_cli import pagellm
from tests.test_offline_eval import TINY, write_interactions
from tests.test_training_run import same_weights, tiny_snapshot

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def ray_address() -> Iterator[str]:
    """One local Ray for the module (starting one costs about 8 s of CPU here): the warm
    worker's runner joins it in this process, `pagellm eval` by its address."""
    import ray

    context = ray.init(num_cpus=2, num_gpus=0, include_dashboard=False, log_to_driver=False)
    try:
        yield context.address_info["gcs_address"]
    finally:
        ray.shutdown()


def test_one_warm_ray_worker_reproduces_the_in_process_stage_job_after_job(
    ray_address: str, tmp_path: Path
) -> None:
    # With one worker the runner keeps it between jobs (``RaySettings.keep_warm``): the second
    # job must run in the same process and still train exactly what a fresh process trains.
    snapshot = tiny_snapshot(tmp_path)
    settings = LearnerSettings.model_validate(TINY)
    train_all(snapshot, settings, tmp_path / "in_process", ["sft"])
    on_ray = [tmp_path / "on_ray_1", tmp_path / "on_ray_2"]
    for run in on_ray:
        shutil.copytree(tmp_path / "in_process", run)
        shutil.rmtree(run / "reference")
    with RayStageRunner(RaySettings(workers=1)) as runner:
        pids = []
        for run in on_ray:
            seconds = runner(["finetune"], run, snapshot, settings, lambda title: None)
            assert set(seconds) == {"ray_job_start", "finetune", "ray_job_end"}
            pids.append(runner.warm_worker_pid())
        assert pids[0] is not None and pids[0] == pids[1]
        # Asked of the same real cluster (starting another just to be refused took 17-30 s).
        with pytest.raises(NotEnoughResources, match="64 workers need a CPU each; the Ray clu"):
            RayStageRunner(RaySettings(workers=64)).connect()
        # A runner on a Ray its caller started (the closed loop's) checked nothing: it trained
        # on the CPU whatever the cluster or the settings said about GPUs.
        on_gpu = RayStageRunner(RaySettings(use_gpu=True))
        with pytest.raises(NotEnoughResources, match="1 workers need a GPU each; the Ray clus"):
            on_gpu(["finetune"], on_ray[0], snapshot, settings, lambda title: None)
    assert runner.warm_worker_pid() is None  # released with the runner
    expected = load_policy(tmp_path / "in_process" / "reference")
    for run in on_ray:
        assert same_weights(expected, load_policy(run / "reference"))


def test_eval_runs_every_stage_as_a_ray_train_job_on_two_workers(
    ray_address: str, tmp_path: Path
) -> None:
    data, out, settings = tmp_path / "ratings.csv", tmp_path / "eval", tmp_path / "settings.json"
    write_interactions(data, users=40)
    settings.write_text(LearnerSettings.model_validate(TINY).model_dump_json())
    command = ("eval", "--data", str(data), "--out", str(out), "--settings", str(settings),
               "--prompt-length", "5", "--ablations", "sft,both", "--workers", "2")  # fmt: skip
    # The warm worker released above: both CPUs are free. One job: 28-31 s to start, alone.
    result = pagellm(*command, timeout_s=600, env={"RAY_ADDRESS": ray_address})
    assert result.returncode == 0, result.stderr.decode()[-3000:]
    run = out / "run"
    # Whole stage directories: what a later run keeps (test_training_run resumes from them).
    for stage in ("meta", "reference", "reward", "policy_both"):
        assert (run / stage / "curve.json").exists()
    assert not list(run.glob(".*.partial")) and not list((run / ".ray").glob("*"))
    curves = json.loads((run / "policy_both" / "curve.json").read_text())
    assert len(curves["mean_reward"]) == TINY["ppo"]["iterations"]
    finetune = json.loads((run / "reference" / "curve.json").read_text())["finetune_nll"]
    assert len(finetune) == TINY["supervised"]["finetune_epochs"] and finetune[1] < finetune[0]
    assert json.loads((out / "metrics_both.json").read_text())["users"] == 40


def test_only_ray_train_jobs_get_a_runtime_environment() -> None:
    # Its one variable is Ray Train's; the warm worker, given none, starts on an idle process.
    assert "runtime_env" not in ray_init_options(RaySettings())
    for settings in (RaySettings(workers=2), RaySettings(keep_warm=False)):
        variables = ray_init_options(settings)["runtime_env"]["env_vars"]
        assert variables == {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.25"}
