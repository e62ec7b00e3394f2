"""Each training stage as a Ray Train job: a TorchTrainer whose workers run the stage's function
(``learner.stages``) on their share of the data, gloo averaging gradients on CPUs.

The first worker writes the stage's output into a directory of its own and reports it as the
job's checkpoint; the driver copies that checkpoint into the run directory and moves it into
place, so a stage appears in the run only when its job has finished. Workers read the earlier
stages from the run directory: on a cluster it must be on storage every node sees, as Ray
Train's own storage path must be.

Progress: the first worker writes "done total" to a file, which the driver polls for its bar.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any

import torch

from learner.artifacts import finish_stage, staging_directory
from learner.data_parallel import Shard
from learner.settings import LearnerSettings, RaySettings
from learner.stages import StageContext, output_of, run_stage
from streams.training_snapshot import TrainingSnapshot

log = logging.getLogger(__name__)

PROGRESS_EVERY_S = 0.5


class StageFailed(RuntimeError):
    """A stage's Ray Train job ended with an error."""


class ProgressFile:
    """Counts the worker's steps and writes 'done total' at most every half second."""

    def __init__(self, path: Path) -> None:
        self.path, self.done, self.written_at = path, 0, 0.0

    def __call__(self, total: int) -> None:
        self.done += 1
        now = time.monotonic()
        if now - self.written_at >= PROGRESS_EVERY_S or self.done >= total:
            partial = self.path.with_suffix(".tmp")
            partial.write_text(f"{self.done} {total}")
            os.replace(partial, self.path)
            self.written_at = now

    @staticmethod
    def read(path: Path) -> tuple[int, int] | None:
        try:
            done, total = path.read_text().split()
        except (OSError, ValueError):
            return None
        return int(done), int(total)


def stage_worker(config: dict[str, Any]) -> None:
    """What each Ray Train worker runs: its share of one stage, then the report."""
    import ray
    import ray.train
    import ray.train.torch

    torch.set_num_threads(1)  # one CPU per worker: more threads oversubscribe the machine
    context = ray.train.get_context()
    shard = Shard(context.get_world_rank(), context.get_world_size())
    if config["use_gpu"]:
        torch.set_default_device(ray.train.torch.get_device())
    settings = LearnerSettings.model_validate_json(config["settings"])
    progress = ProgressFile(Path(config["progress"])) if shard.is_first else None
    snapshot = ray.get(config["snapshot"])  # from the object store: put there once per run
    with tempfile.TemporaryDirectory() as out:
        ctx = StageContext(Path(config["run_dir"]), snapshot, settings, shard, progress)
        run_stage(config["stage"], ctx, Path(out))
        checkpoint = ray.train.Checkpoint.from_directory(out) if shard.is_first else None
        ray.train.report({"stage": config["stage"]}, checkpoint=checkpoint)


class NotEnoughResources(ValueError):
    """The Ray cluster cannot place the workers the settings ask for."""


class RayStageRunner:
    """Runs stages as Ray Train jobs. It joins the Ray cluster the settings name (or
    RAY_ADDRESS), else starts a local Ray when the first stage needs one; as a context manager
    it stops only the Ray it started."""

    def __init__(self, settings: RaySettings) -> None:
        self.settings = settings
        self.started_ray = False
        self.use_gpu = False
        self.shared: tuple[TrainingSnapshot, Any] | None = None

    def snapshot_ref(self, snapshot: TrainingSnapshot) -> Any:
        """The snapshot in Ray's object store, put there once for every stage that trains on
        it: jobs get a reference, not a pickled copy in each job's configuration."""
        import ray

        if self.shared is None or self.shared[0] is not snapshot:
            self.shared = (snapshot, ray.put(snapshot))
        return self.shared[1]

    def __enter__(self) -> RayStageRunner:
        return self

    def connect(self) -> None:
        import ray

        if not ray.is_initialized():
            ray.init(address=self.settings.address, include_dashboard=False, log_to_driver=False)
            self.started_ray = True
        resources = ray.cluster_resources()
        self.use_gpu = (
            torch.cuda.is_available() if self.settings.use_gpu is None else self.settings.use_gpu
        )
        kind = "GPU" if self.use_gpu else "CPU"
        if self.settings.workers > resources.get(kind, 0):
            raise NotEnoughResources(
                f"ray.workers: {self.settings.workers} workers need a {kind} each; "
                f"the Ray cluster has {resources.get(kind, 0):g}"
            )

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        import ray

        self.shared = None
        if self.started_ray:
            ray.shutdown()
            self.started_ray = False

    def __call__(
        self,
        stage: str,
        run_dir: Path,
        snapshot: TrainingSnapshot,
        settings: LearnerSettings,
        on_step: Callable[[int], None] | None,
    ) -> None:
        import ray
        from ray.train import RunConfig, ScalingConfig
        from ray.train.torch import TorchTrainer

        if not ray.is_initialized():
            self.connect()
        name = output_of(stage)
        run_dir = run_dir.resolve()
        progress = run_dir / f".{name}.progress"
        progress.unlink(missing_ok=True)
        job = f"{stage}-{uuid.uuid4().hex[:8]}"
        trainer = TorchTrainer(
            stage_worker,
            train_loop_config={
                "stage": stage,
                "run_dir": str(run_dir),
                "snapshot": self.snapshot_ref(snapshot),
                "settings": settings.model_dump_json(),
                "progress": str(progress),
                "use_gpu": self.use_gpu,
            },
            scaling_config=ScalingConfig(num_workers=self.settings.workers, use_gpu=self.use_gpu),
            run_config=RunConfig(name=job, storage_path=str(run_dir / ".ray")),
        )
        stop = threading.Event()
        poller = threading.Thread(target=follow_progress, args=(progress, on_step, stop))
        poller.start()
        try:
            result = trainer.fit()
        except Exception as exc:  # Ray wraps the worker's error; name the stage
            raise StageFailed(f"stage {stage}: its Ray Train job failed: {exc}") from exc
        finally:
            stop.set()
            poller.join()
        if result.error is not None or result.checkpoint is None:
            raise StageFailed(f"stage {stage}: its Ray Train job failed: {result.error}")
        result.checkpoint.to_directory(str(staging_directory(run_dir, name)))
        finish_stage(run_dir, name)
        shutil.rmtree(run_dir / ".ray" / job, ignore_errors=True)
        progress.unlink(missing_ok=True)
        log.info("stage %s finished on Ray (%d workers)", stage, self.settings.workers)


def follow_progress(
    path: Path, on_step: Callable[[int], None] | None, stop: threading.Event
) -> None:
    """Call ``on_step`` once per step the worker has recorded, until ``stop`` is set."""
    shown = 0
    while on_step is not None:
        finished = stop.wait(PROGRESS_EVERY_S)
        state = ProgressFile.read(path)
        if state is not None:
            done, total = state
            for _ in range(done - shown):
                on_step(total)
            shown = max(shown, done)
        if finished:
            return
