"""The training stages as one Ray Train job: a TorchTrainer whose workers run the stages'
functions (``learner.stages``) one after another on their share of the data, gloo averaging
gradients on CPUs.

One job for all the stages a run still needs, not one per stage: starting a job costs about
10-15 s on this machine (the controller, the worker processes, their imports, the process
group), as much as a warm start's reward-model stage trains. After each stage the first worker
moves the stage's output into the run directory (by rename: a stage appears whole or not at
all) and every worker waits at a barrier before the next stage reads it. Workers read and
write the run directory, so on a cluster it must be on storage every node sees, as Ray Train's
own storage path must be. A job that fails keeps the stages it finished.

With one worker (``RaySettings.keep_warm``) the stages run instead on ``WarmStageWorker``, a
plain Ray actor the runner keeps between jobs: a Ray Train job starts a controller, three or
four helper actors and its workers, each a new process importing torch, and took 14-20 s to
reach its worker on an idle 2-core machine, where a retrain loop's later jobs on a warm worker
start at once.

Progress: the first worker writes the current stage, its steps so far and the finished stages'
start and end times to a JSON file, which the driver polls for its bars and its timings.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import tempfile
import threading
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import torch

from learner.artifacts import finish_stage, staging_directory
from learner.data_parallel import Shard
from learner.settings import LearnerSettings, RaySettings
from learner.stages import STAGE_TITLES, StageContext, StageProgress, output_of, run_stage
from streams.derive.training_snapshot import TrainingSnapshot
from streams.store.atomic_files import write_atomically

log = logging.getLogger(__name__)

PROGRESS_EVERY_S = 0.5


class StageFailed(RuntimeError):
    """A stage's Ray Train job ended with an error."""


class ProgressFile:
    """The first worker's progress: the stage it trains, its steps, and when each finished
    stage started and ended (epoch seconds), rewritten at most every half second."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.state: dict[str, Any] = {"stage": None, "done": 0, "total": 0, "spans": {}}
        self.written_at = 0.0
        self.mark("entered")

    def mark(self, moment: str) -> None:
        """Note when the worker reached ``moment`` (epoch seconds)."""
        self.state[moment] = time.time()
        self.write()

    def start(self, stage: str) -> None:
        self.state |= {"stage": stage, "done": 0, "total": 0, "started": time.time()}
        self.write()

    def __call__(self, total: int) -> None:
        self.state["done"] += 1
        self.state["total"] = total
        if time.monotonic() - self.written_at >= PROGRESS_EVERY_S or self.state["done"] >= total:
            self.write()

    def finish(self, stage: str) -> None:
        self.state["spans"][stage] = (self.state["started"], time.time())
        self.write()

    def write(self) -> None:
        write_atomically(self.path, json.dumps(self.state))
        self.written_at = time.monotonic()

    @staticmethod
    def read(path: Path) -> dict[str, Any] | None:
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            return None


def run_stages(config: dict[str, Any], shard: Shard) -> None:
    """This worker's share of every stage of ``config``, in order."""
    import ray

    torch.set_num_threads(1)  # one CPU per worker: more threads oversubscribe the machine
    settings = LearnerSettings.model_validate_json(config["settings"])
    run_dir = Path(config["run_dir"])
    progress = ProgressFile(Path(config["progress"])) if shard.is_first else None
    snapshot = ray.get(config["snapshot"])  # from the object store: put there once per run
    if progress is not None:
        progress.mark("ready")
    for stage in config["stages"]:
        name = output_of(stage)
        if progress is not None:
            progress.start(stage)
        with tempfile.TemporaryDirectory() as unused:  # only the first worker writes
            out = staging_directory(run_dir, name) if shard.is_first else Path(unused)
            run_stage(stage, StageContext(run_dir, snapshot, settings, shard, progress), out)
        if progress is not None:
            finish_stage(run_dir, name)
            progress.finish(stage)
        shard.barrier()  # the next stage reads this one from the run directory


def stage_worker(config: dict[str, Any]) -> None:
    """What each Ray Train worker runs: its share of every stage, in order."""
    import ray.train
    import ray.train.torch

    context = ray.train.get_context()
    if config["use_gpu"]:
        torch.set_default_device(ray.train.torch.get_device())
    run_stages(config, Shard(context.get_world_rank(), context.get_world_size()))
    ray.train.report({"stages": len(config["stages"])})


class WarmStageWorker:
    """A single training worker kept as a Ray actor between jobs (``RaySettings.keep_warm``):
    its process, imports (torch, transformers) and CPU stay, so a retrain's job starts at once
    where a Ray Train job took 14-20 s to reach its worker on an idle 2-core machine and 41 s
    beside serving. Every stage seeds its own generators, so a reused worker trains exactly as
    a fresh one does."""

    def __init__(self, use_gpu: bool) -> None:
        if use_gpu:
            torch.set_default_device("cuda")  # Ray made the actor's one GPU the only visible

    def pid(self) -> int:
        return os.getpid()

    def run(self, config: dict[str, Any]) -> None:
        run_stages(config, Shard())


class NotEnoughResources(ValueError):
    """The Ray cluster cannot place the workers the settings ask for."""


def ray_init_options(settings: RaySettings) -> dict[str, Any]:
    """``ray.init``'s arguments for training: the cluster, quiet workers, Train's polling."""
    options: dict[str, Any] = {
        "address": settings.address,
        "include_dashboard": False,
        "log_to_driver": False,
    }
    if not settings.warm_worker:
        # Only Ray Train reads it; a job-wide runtime environment makes Ray start new worker
        # processes for it rather than use those it started idle (the warm worker was ready
        # 3.5-3.9 s after ray.init with it, 2.0-2.2 s without).
        interval = str(settings.health_check_interval_s)
        options["runtime_env"] = {"env_vars": {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": interval}}
    return options


class RayStageRunner:
    """Runs stages as Ray Train jobs. It joins the Ray cluster the settings name (or
    RAY_ADDRESS), else starts a local Ray when the first stage needs one; as a context manager
    it stops only the Ray it started."""

    def __init__(self, settings: RaySettings) -> None:
        self.settings = settings
        self.started_ray = False
        self.connected = False
        self.use_gpu = False
        self.shared: tuple[TrainingSnapshot, Any] | None = None
        self.warm: Any = None  # the WarmStageWorker actor, once a job has needed it

    def snapshot_ref(self, snapshot: TrainingSnapshot) -> Any:
        """The snapshot in Ray's object store, put there once for every job that trains on
        it: jobs get a reference, not a pickled copy in each job's configuration."""
        import ray

        if self.shared is None or self.shared[0] is not snapshot:
            self.shared = (snapshot, ray.put(snapshot))
        return self.shared[1]

    def __enter__(self) -> RayStageRunner:
        return self

    def connect(self) -> None:
        """Join the cluster (or start a local Ray), then check that it can place the workers
        and whether they get GPUs: also when the caller started Ray (the closed loop does)."""
        import ray

        if not ray.is_initialized():
            ray.init(**ray_init_options(self.settings))
            self.started_ray = True
        resources = ray.cluster_resources()
        # The cluster's GPUs, not this process's: a driver on a CPU node (a KubeRay head, a
        # cron job) still trains on the cluster's GPU workers.
        self.use_gpu = (
            resources.get("GPU", 0) >= self.settings.workers
            if self.settings.use_gpu is None
            else self.settings.use_gpu
        )
        kind = "GPU" if self.use_gpu else "CPU"
        if self.settings.workers > resources.get(kind, 0):
            raise NotEnoughResources(
                f"ray.workers: {self.settings.workers} workers need a {kind} each; "
                f"the Ray cluster has {resources.get(kind, 0):g}"
            )
        self.connected = True

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        import ray

        self.shared = None
        self.release_warm_worker()
        if self.started_ray:
            ray.shutdown()
            self.started_ray = False
        self.connected = False

    def release_warm_worker(self) -> None:
        """Stop the warm worker (its CPU goes back to the cluster); the next job starts one."""
        import ray

        warm, self.warm = self.warm, None
        if warm is not None and ray.is_initialized():  # a Ray already stopped took it along
            ray.kill(warm)

    def warm_worker_pid(self) -> int | None:
        """The warm worker's process id, None before a job has started it."""
        import ray

        return None if self.warm is None else int(ray.get(self.warm.pid.remote()))

    def __call__(
        self,
        stages: Sequence[str],
        run_dir: Path,
        snapshot: TrainingSnapshot,
        settings: LearnerSettings,
        on_stage: StageProgress,
    ) -> dict[str, float]:
        """Train ``stages`` in one job; the seconds of each, and of the job's start and end
        (``caller_seconds``)."""
        import ray

        if not (self.connected and ray.is_initialized()):
            self.connect()
        run_dir = run_dir.resolve()
        job = f"{'-'.join(stages)}-{uuid.uuid4().hex[:8]}"
        progress = run_dir / f".{job}.progress"
        config = {
            "stages": list(stages),
            "run_dir": str(run_dir),
            "snapshot": self.snapshot_ref(snapshot),
            "settings": settings.model_dump_json(),
            "progress": str(progress),
            "use_gpu": self.use_gpu,
        }
        stop = threading.Event()
        poller = threading.Thread(target=follow_progress, args=(progress, on_stage, stop))
        poller.start()
        started = time.time()
        try:
            if self.settings.warm_worker:
                self._run_on_warm_worker(config)
            else:
                self._run_ray_train_job(job, run_dir, config)
        except Exception as exc:  # Ray wraps the worker's error; name the stage
            failed = (ProgressFile.read(progress) or {}).get("stage") or stages[0]
            raise StageFailed(f"stage {failed}: its Ray job failed: {exc}") from exc
        finally:
            stop.set()
            poller.join()
        ended = time.time()
        worker = ProgressFile.read(progress) or {}
        if "ready" in worker:
            log.info(
                "Ray job %s: the worker started after %.1f s, had the snapshot after %.1f s;"
                " the job returned %.1f s after its last stage",
                job,
                worker["entered"] - started,
                worker["ready"] - started,
                ended - max(end for _, end in worker["spans"].values()),
            )
        shutil.rmtree(run_dir / ".ray" / job, ignore_errors=True)
        progress.unlink(missing_ok=True)
        log.info("stages %s finished on Ray (%d workers)", ", ".join(stages), self.settings.workers)
        return caller_seconds(stages, worker, started, ended)

    def _run_on_warm_worker(self, config: dict[str, Any]) -> None:
        import ray
        from ray.exceptions import RayActorError

        if self.warm is None:
            actor = ray.remote(num_cpus=1, num_gpus=int(self.use_gpu))(WarmStageWorker)
            self.warm = actor.remote(self.use_gpu)
        try:
            ray.get(self.warm.run.remote(config))
        except RayActorError:
            self.warm = None  # it died (killed, out of memory): the next job starts another
            raise
        except BaseException:
            # A stage that failed or was interrupted may have left the process in any state.
            self.release_warm_worker()
            raise

    def _run_ray_train_job(self, job: str, run_dir: Path, config: dict[str, Any]) -> None:
        from ray.train import RunConfig, ScalingConfig
        from ray.train.torch import TorchTrainer

        trainer = TorchTrainer(
            stage_worker,
            train_loop_config=config,
            scaling_config=ScalingConfig(num_workers=self.settings.workers, use_gpu=self.use_gpu),
            run_config=RunConfig(name=job, storage_path=str(run_dir / ".ray")),
        )
        # fit() in the main thread installs Ray Train's own SIGINT handler and leaves it there,
        # bound to this job's controller: a later Ctrl-C would abort a job long gone.
        sigint = signal.getsignal(signal.SIGINT)
        try:
            result = trainer.fit()
        finally:
            if threading.current_thread() is threading.main_thread():
                signal.signal(signal.SIGINT, sigint)
        if result.error is not None:
            raise result.error


def caller_seconds(
    stages: Sequence[str], progress: dict[str, Any], started: float, ended: float
) -> dict[str, float]:
    """Where the job's wall time went: ``ray_job_start`` (until the worker had its imports and
    the snapshot), each stage (from the end of the one before), ``ray_job_end`` (from the last
    stage's end until the job returned). They add up to the job's wall time."""
    spans = progress.get("spans", {})
    if "ready" not in progress or any(stage not in spans for stage in stages):
        log.warning("no timings of stages %s: the job's time goes to the first", stages)
        return {stage: (ended - started if n == 0 else 0.0) for n, stage in enumerate(stages)}
    seconds = {"ray_job_start": progress["ready"] - started}
    before = progress["ready"]
    for stage in stages:
        seconds[stage] = spans[stage][1] - before
        before = spans[stage][1]
    seconds["ray_job_end"] = ended - before
    return seconds


def follow_progress(path: Path, on_stage: StageProgress, stop: threading.Event) -> None:
    """Announce each stage the worker starts and step its bar, until ``stop`` is set."""
    stage, step, shown, total = None, None, 0, 0
    while True:
        finished = stop.wait(PROGRESS_EVERY_S)
        state = ProgressFile.read(path)
        if state is not None and state["stage"] is not None:
            if state["stage"] != stage:
                for _ in range(total - shown):  # the last steps of the stage before
                    if step is not None:
                        step(total)
                stage, shown = state["stage"], 0
                step = on_stage(STAGE_TITLES[stage])
            total = state["total"]
            for _ in range(state["done"] - shown):
                if step is not None:
                    step(state["total"])
            shown = max(shown, state["done"])
        if finished:
            return
