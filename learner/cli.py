"""``pagellm eval``: the whole method on an interactions file, under the paper's protocol.

torch and transformers load only when the command runs: every other ``pagellm`` command starts
without paying for them.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from rich.console import Console

from learner import registry_cli, retrain_cli
from learner.ablations import ABLATIONS
from learner.command_options import (
    CommandError,
    add_training_flags,
    learner_settings_from,
    run_directory,
    train_or_refuse,
    training_session,
)

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
    run.add_argument("--prompt-length", type=int, help="positives in a prompt (20)")
    add_training_flags(run)
    run.add_argument(
        "--fresh",
        action="store_true",
        help="discard OUT/run; by default the stages it holds from a stopped run are kept",
    )
    run.set_defaults(run=run_eval)
    retrain_cli.register(commands)
    registry_cli.register(commands)


def run_eval(args: argparse.Namespace) -> int:
    from learner.interactions_file import InteractionsError, read_interactions
    from streams.derive.derived_state import DeriveConfig
    from streams.derive.training_snapshot import build_training_snapshot
    from streams.progress_bars import progress_bar

    ablations = [a for a in args.ablations.split(",") if a]
    unknown = [a for a in ablations if a not in ABLATIONS]
    try:
        if unknown:
            raise CommandError(f"ablations: unknown {unknown}; choose from {ABLATIONS}")
        settings = learner_settings_from(args)
        try:
            data = read_interactions(args.data)
        except (InteractionsError, OSError) as exc:
            raise CommandError(str(exc)) from exc
        derive = DeriveConfig(
            **({"prompt_length": args.prompt_length} if args.prompt_length else {})
        )
        snapshot = build_training_snapshot(data.ratings, data.catalogue, derive, data.given_splits)
        console.print(
            f"{len(snapshot.test)} users evaluated ({snapshot.users_left_out} left out), "
            f"{sum(1 for g in snapshot.golden.values() if g.items)} golden lists, "
            f"{sum(len(p) for p in snapshot.pairs.values())} pairs"
        )
        run_dir = run_directory(args.out, args.fresh)
        # Model code only now: loading torch and transformers takes 8-10 s here, a refusal 1 s.
        import torch

        from learner.offline_eval import (
            page_quality,
            plot_training_curves,
            recommend,
            relevance_metrics,
            write_metrics,
            write_recommendations,
        )
        from learner.pipeline import train_all

        torch.set_num_threads(1)
        with training_session(console, settings, args.in_process) as (runner, on_stage):
            models = train_or_refuse(
                lambda: train_all(snapshot, settings, run_dir, ablations, runner, on_stage)
            )
    except CommandError as exc:
        console.print(f"pagellm eval: {exc}", markup=False)
        return exc.code
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
