"""What the learner's commands share: the training flags, their settings, and a training
session (Ray or in process) with a progress bar per stage.

torch and transformers are imported inside the functions: only commands that train load them.
"""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from pydantic import ValidationError
from rich.console import Console

from learner.settings import LearnerSettings
from schemas.events import describe_validation_error
from streams.cli import settings_from
from streams.progress_bars import progress_bar
from streams.store.event_store import EventStore

if TYPE_CHECKING:
    from learner.pipeline import StageRunner
    from learner.stages import StageProgress

T = TypeVar("T")


class CommandError(Exception):
    """A refusal to print as it is, with the exit code to return (2: bad input)."""

    def __init__(self, message: str, code: int = 2) -> None:
        super().__init__(message)
        self.code = code


def refusing(console: Console, run: Callable[[argparse.Namespace], int], name: str):  # type: ignore[no-untyped-def]
    """``run``, with a CommandError printed as 'pagellm NAME: ...' and its exit code."""

    def guarded(args: argparse.Namespace) -> int:
        try:
            return int(run(args))
        except CommandError as exc:
            console.print(f"pagellm {name}: {exc}", markup=False)
            return exc.code

    return guarded


def add_store_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--store", dest="store_dir", type=Path, help="event store directory (PAGELLM_STORE_DIR)"
    )


def store_dir_from(args: argparse.Namespace) -> Path:
    """The store of --store or PAGELLM_STORE_DIR; refused when no ingest worker made it."""
    store = settings_from(args).store_dir
    if not EventStore(store).ledger_dir.exists():
        raise CommandError(f"--store: no event store at {store} (run an ingest worker first)")
    return store


def add_training_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--settings", type=Path, help="LearnerSettings as JSON (paper defaults)")
    parser.add_argument(
        "--workers", type=int, help="data-parallel Ray Train workers per stage (settings: 1)"
    )
    parser.add_argument(
        "--in-process",
        action="store_true",
        help="train each stage in this process instead of as a Ray Train job",
    )


def learner_settings_from(args: argparse.Namespace) -> LearnerSettings:
    """The --settings file (or the defaults), with --workers applied; refusals name the field."""
    try:
        settings = (
            LearnerSettings.model_validate_json(args.settings.read_text())
            if args.settings
            else LearnerSettings()
        )
    except (ValidationError, OSError) as exc:
        reason = describe_validation_error(exc) if isinstance(exc, ValidationError) else exc
        raise CommandError(f"--settings {args.settings}: {reason}") from exc
    if args.workers is not None:
        if args.workers < 1:
            raise CommandError(f"--workers: must be at least 1, not {args.workers}")
        settings.ray.workers = args.workers
    return settings


def stage_progress(bar: object) -> StageProgress:
    """A progress task per stage, advanced once per optimiser step (PPO: per iteration)."""

    def start(title: str) -> Callable[[int], None]:
        task = bar.add_task(title, total=None)  # type: ignore[attr-defined]

        def step(total: int) -> None:
            bar.update(task, total=total, advance=1)  # type: ignore[attr-defined]

        return step

    return start


@contextlib.contextmanager
def training_session(
    console: Console, settings: LearnerSettings, in_process: bool
) -> Iterator[tuple[StageRunner, StageProgress]]:
    """(runner, on_stage): Ray Train jobs on the Ray the settings name (or a local one started
    for the session and stopped after it), or this process; a live progress bar."""
    from transformers.utils import logging as transformers_logging

    from learner.ray_jobs import RayStageRunner
    from learner.stages import run_in_process

    # Every stage loads and saves models: transformers' per-load bars would bury the stage bars.
    transformers_logging.disable_progress_bar()
    with contextlib.ExitStack() as stack:
        runner: StageRunner = run_in_process
        if not in_process:
            runner = stack.enter_context(RayStageRunner(settings.ray))
        bar = stack.enter_context(progress_bar(console))
        yield runner, stage_progress(bar)


def run_directory(out: Path, fresh: bool) -> Path:
    """OUT/run, emptied first when ``fresh``: otherwise the stages it holds are kept."""
    import shutil

    run_dir = out / "run"
    if fresh and run_dir.exists():
        shutil.rmtree(run_dir)
    return run_dir


def train_or_refuse(train: Callable[[], T]) -> T:
    """``train()``, with a mismatched run directory or too few Ray workers refused (exit 2) and
    a failed stage reported (exit 1)."""
    from learner.ray_jobs import NotEnoughResources, StageFailed
    from learner.stages import RunMismatch

    try:
        return train()
    except (RunMismatch, NotEnoughResources) as exc:
        raise CommandError(str(exc)) from exc
    except StageFailed as exc:
        raise CommandError(str(exc), code=1) from exc
