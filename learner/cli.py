"""``pagellm eval``: the whole method on an interactions file, under the paper's protocol.

torch and transformers load only when the command runs: every other ``pagellm`` command starts
without paying for them.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
from collections.abc import Callable
from pathlib import Path

from rich.console import Console

from learner.ablations import ABLATIONS

log = logging.getLogger(__name__)
console = Console(stderr=True, soft_wrap=True)


def register(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    run = commands.add_parser(
        "eval",
        help="train every ablation on an interactions file and "
        "evaluate it under the paper's protocol",
    )
    run.add_argument(
        "--data",
        type=Path,
        required=True,
        help="CSV: user_id,item_id,rating,timestamp[,category][,split]",
    )
    run.add_argument("--out", type=Path, default=Path("var/eval"), help="output directory")
    run.add_argument(
        "--ablations",
        default=",".join(ABLATIONS),
        help=f"comma-separated, of {', '.join(ABLATIONS)}",
    )
    run.add_argument("--settings", type=Path, help="LearnerSettings as JSON (paper defaults)")
    run.add_argument("--prompt-length", type=int, help="positives in a prompt (20)")
    run.add_argument(
        "--workers", type=int, help="data-parallel Ray Train workers per stage (settings: 1)"
    )
    run.add_argument(
        "--in-process",
        action="store_true",
        help="train each stage in this process instead of as a Ray Train job",
    )
    run.add_argument(
        "--fresh",
        action="store_true",
        help="discard OUT/run; by default the stages it holds from a stopped run are kept",
    )
    run.set_defaults(run=run_eval)


def run_eval(args: argparse.Namespace) -> int:
    import shutil

    import torch
    from pydantic import ValidationError

    from learner.interactions_file import InteractionsError, read_interactions
    from learner.offline_eval import (
        page_quality,
        plot_training_curves,
        recommend,
        relevance_metrics,
        write_metrics,
        write_recommendations,
    )
    from learner.pipeline import StageRunner, train_all
    from learner.ray_jobs import NotEnoughResources, RayStageRunner, StageFailed
    from learner.settings import LearnerSettings
    from learner.stages import RunMismatch, run_in_process
    from schemas.events import describe_validation_error
    from streams.derived_state import DeriveConfig
    from streams.progress_bars import progress_bar
    from streams.training_snapshot import build_training_snapshot

    torch.set_num_threads(1)
    ablations = [a for a in args.ablations.split(",") if a]
    unknown = [a for a in ablations if a not in ABLATIONS]
    if unknown:
        console.print(f"pagellm eval: ablations: unknown {unknown}; choose from {ABLATIONS}")
        return 2
    try:
        settings = (
            LearnerSettings.model_validate_json(args.settings.read_text())
            if args.settings
            else LearnerSettings()
        )
    except (ValidationError, OSError) as exc:
        reason = describe_validation_error(exc) if isinstance(exc, ValidationError) else exc
        console.print(f"pagellm eval: --settings {args.settings}: {reason}", markup=False)
        return 2
    if args.workers is not None:
        if args.workers < 1:
            console.print(f"pagellm eval: --workers: must be at least 1, not {args.workers}")
            return 2
        settings.ray.workers = args.workers
    try:
        data = read_interactions(args.data)
    except (InteractionsError, OSError) as exc:
        console.print(f"pagellm eval: {exc}", markup=False)
        return 2
    derive = DeriveConfig(**({"prompt_length": args.prompt_length} if args.prompt_length else {}))
    snapshot = build_training_snapshot(data.ratings, data.catalogue, derive, data.given_splits)
    console.print(
        f"{len(snapshot.test)} users evaluated ({snapshot.users_left_out} left out), "
        f"{sum(1 for g in snapshot.golden.values() if g.items)} golden lists, "
        f"{sum(len(p) for p in snapshot.pairs.values())} pairs"
    )
    run_dir = args.out / "run"
    if args.fresh and run_dir.exists():
        shutil.rmtree(run_dir)
    with contextlib.ExitStack() as stack:
        runner: StageRunner = run_in_process
        if not args.in_process:
            runner = stack.enter_context(RayStageRunner(settings.ray))
        bar = stack.enter_context(progress_bar(console))

        def stage_bar(name: str) -> Callable[[int], None]:
            task = bar.add_task(name, total=None)

            def step(total: int) -> None:
                bar.update(task, total=total, advance=1)

            return step

        try:
            models = train_all(snapshot, settings, run_dir, ablations, runner, stage_bar)
        except (RunMismatch, NotEnoughResources) as exc:
            console.print(f"pagellm eval: {exc}", markup=False)
            return 2
        except StageFailed as exc:
            console.print(f"pagellm eval: {exc}", markup=False)
            return 1
    users = sorted(snapshot.test)
    for ablation in ablations:
        policy = models.policies[ablation]
        with progress_bar(console) as bar:
            task = bar.add_task(f"recommending ({ablation})", total=len(users))
            recs = recommend(
                policy,
                models.vocab,
                snapshot,
                users,
                on_batch=lambda n, task=task: bar.advance(task, n),
            )
        metrics = relevance_metrics(recs, snapshot.test) | page_quality(
            policy, models.vocab, snapshot, settings.ppo.page_length
        )
        metrics |= {
            "ablation": ablation,
            "users": len(users),
            "recommendations": "ranked by the policy's first-slot log-probability",
        }
        write_metrics(args.out / f"metrics_{ablation}.json", metrics)
        write_recommendations(args.out / f"recommendations_{ablation}.csv", recs)
        console.print(
            f"{ablation}: "
            + json.dumps({k: round(v, 4) for k, v in metrics.items() if isinstance(v, float)})
        )
    write_metrics(args.out / "reward_accuracy.json", models.reward_accuracy)
    plot_training_curves(models.curves, args.out / "training_curves.png")
    console.print(f"written to {args.out}")
    return 0
