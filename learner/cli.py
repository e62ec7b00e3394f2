"""``pagellm eval``: the whole method on an interactions file, under the paper's protocol.

torch and transformers load only when the command runs: every other ``pagellm`` command starts
without paying for them.
"""

from __future__ import annotations

import argparse
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
    run.set_defaults(run=run_eval)


def run_eval(args: argparse.Namespace) -> int:
    import torch

    from learner.artifacts import save_models
    from learner.interactions_file import InteractionsError, read_interactions
    from learner.offline_eval import (
        page_quality,
        plot_training_curves,
        recommend,
        relevance_metrics,
        write_metrics,
        write_recommendations,
    )
    from learner.pipeline import LearnerSettings, train_all
    from streams.derived_state import DeriveConfig
    from streams.progress_bars import progress_bar
    from streams.training_snapshot import build_training_snapshot

    torch.set_num_threads(1)
    ablations = [a for a in args.ablations.split(",") if a]
    unknown = [a for a in ablations if a not in ABLATIONS]
    if unknown:
        console.print(f"pagellm eval: ablations: unknown {unknown}; choose from {ABLATIONS}")
        return 2
    settings = (
        LearnerSettings.model_validate_json(args.settings.read_text())
        if args.settings
        else LearnerSettings()
    )
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
    with progress_bar(console) as bar:

        def stage_bar(name: str) -> Callable[[int], None]:
            task = bar.add_task(name, total=None)

            def step(total: int) -> None:
                bar.update(task, total=total, advance=1)

            return step

        models = train_all(
            snapshot,
            settings,
            ablations,
            on_stage=stage_bar,
        )
    args.out.mkdir(parents=True, exist_ok=True)
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
    save_models(models, args.out / "run")
    write_metrics(args.out / "reward_accuracy.json", models.reward_accuracy)
    plot_training_curves(models.curves, args.out / "training_curves.png")
    console.print(f"written to {args.out}")
    return 0
