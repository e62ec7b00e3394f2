"""The method end to end: every stage a run needs, in order, each written into the run directory.

Ablations (one setting): ``sft`` is the fine-tuned reference policy without any reward;
``page``, ``item`` and ``both`` run PPO with R_c, R_f or R_c + R_f. Stages already in the run
directory (from a stopped run with the same settings and data) are kept, not trained again.
The stages a run still needs run as one Ray Train job (``RayStageRunner``) or in this process
(``run_in_process``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

from learner.ablations import ABLATIONS, Ablation
from learner.artifacts import TrainedModels, load_models
from learner.settings import LearnerSettings
from learner.stages import (
    STAGE_TITLES,
    StageProgress,
    output_of,
    prepare_run,
    run_in_process,
    stages_for,
)
from streams.derive.training_snapshot import TrainingSnapshot
from streams.store.atomic_files import write_atomically

log = logging.getLogger(__name__)

STAGE_SECONDS_FILE = "stage_seconds.json"


class StageRunner(Protocol):
    """Trains ``stages`` in order into ``run_dir``; returns the seconds of each (and of any
    orchestration around them, e.g. ``ray_job_start``).
    ``on_stage(title)`` is called as each stage starts (see ``train_all``)."""

    def __call__(
        self,
        stages: Sequence[str],
        run_dir: Path,
        snapshot: TrainingSnapshot,
        settings: LearnerSettings,
        on_stage: StageProgress,
    ) -> dict[str, float]: ...


def train_all(
    snapshot: TrainingSnapshot,
    settings: LearnerSettings,
    run_dir: Path,
    ablations: Sequence[Ablation] = ABLATIONS,
    runner: StageRunner = run_in_process,
    on_stage: StageProgress = lambda title: None,
    warm_from: Path | None = None,
) -> TrainedModels:
    """Every stage ``ablations`` need, trained into ``run_dir`` (or kept from it).

    ``on_stage(title)`` announces a stage and may return a callback that is called after each of
    its steps with the stage's expected number of steps (for a progress bar). ``warm_from`` (a
    registered version's model directory) continues from that version: its reference, with the
    snapshot's new tokens added, replaces meta pre-training, and fine-tuning continues it.
    """
    prepare_run(run_dir, snapshot, settings, warm_from)
    missing = []
    for stage in stages_for(ablations, warm=warm_from is not None):
        if (run_dir / output_of(stage)).is_dir():
            log.info("%s: kept from an earlier run in %s", STAGE_TITLES[stage], run_dir)
        else:
            missing.append(stage)
    if missing:
        record_stage_seconds(run_dir, runner(missing, run_dir, snapshot, settings, on_stage))
    return load_models(run_dir, list(ablations))


def record_stage_seconds(run_dir: Path, seconds: dict[str, float]) -> None:
    """Add the seconds each stage took to ``run_dir/stage_seconds.json`` (those of stages kept
    from a stopped run stay as they were)."""
    path = run_dir / STAGE_SECONDS_FILE
    recorded = json.loads(path.read_text()) if path.exists() else {}
    write_atomically(path, json.dumps(recorded | seconds, indent=1))
