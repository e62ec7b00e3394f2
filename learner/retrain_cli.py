"""``pagellm train`` (a run directory from a store snapshot) and ``pagellm retrain now | status |
serve-loop`` (the continuous-learning loop over the registry)."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import signal
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console
from rich.table import Table

from learner.ablations import ABLATIONS
from learner.command_options import (
    CommandError,
    add_store_flag,
    add_training_flags,
    learner_settings_from,
    refusing,
    run_directory,
    store_dir_from,
    train_or_refuse,
    training_session,
)
from learner.settings import RetrainSettings
from streams.cli import add_derive_flags, derive_config_from

if TYPE_CHECKING:
    from learner.retrain import RetrainJob
    from schemas.model_registry import RetrainRecord

log = logging.getLogger(__name__)
console = Console(stderr=True, soft_wrap=True)
out = Console(soft_wrap=True)


def register(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    train = commands.add_parser("train", help="train a run directory from a store snapshot")
    add_store_flag(train)
    train.add_argument("--snapshot", required=True, help="a snapshot id, or 'latest' (pin now)")
    train.add_argument("--out", type=Path, default=Path("var/train"), help="output directory")
    train.add_argument(
        "--warm-from",
        help="a registered version (or 'production') to continue from: reward heads and PPO "
        "only; without it every stage is trained",
    )
    train.add_argument(
        "--ablation", default="both", choices=ABLATIONS, help="the policy to train (both)"
    )
    train.add_argument("--fresh", action="store_true", help="discard OUT/run first")
    add_derive_flags(train)
    add_training_flags(train)
    train.set_defaults(run=refusing(console, run_train, "train"))

    retrain = commands.add_parser("retrain", help="the continuous-learning loop")
    actions = retrain.add_subparsers(dest="action", required=True, metavar="ACTION")
    now = actions.add_parser("now", help="retrain now (through the loop when one runs)")
    add_store_flag(now)
    now.add_argument("--full", action="store_true", help="train every stage, no warm start")
    now.add_argument("--snapshot", help="a snapshot id (default: pin the store now)")
    now.add_argument(
        "--wait-s", type=float, default=3600, help="with a loop running: how long to wait"
    )
    add_derive_flags(now)
    add_training_flags(now)
    now.set_defaults(run=refusing(console, run_retrain_now, "retrain now"))

    status = actions.add_parser("status", help="the loop's state and the last retrains")
    add_store_flag(status)
    status.add_argument("--last", type=int, help="how many retrains to list (settings: 10)")
    status.add_argument("--json", action="store_true", help="one JSON document")
    status.set_defaults(run=refusing(console, run_retrain_status, "retrain status"))

    loop = actions.add_parser("serve-loop", help="retrain on triggers until Ctrl-C")
    add_store_flag(loop)
    loop.add_argument("--interval-s", type=float, help="retrain this often (3600; 0: never)")
    loop.add_argument("--min-new-pairs", type=int, help="...or after this many new pairs (1000)")
    loop.add_argument("--poll-s", type=float, help="how often the triggers are checked (10)")
    loop.add_argument("--full", action="store_true", help="train every stage each time")
    add_derive_flags(loop)
    add_training_flags(loop)
    loop.set_defaults(run=refusing(console, run_serve_loop, "retrain serve-loop"))


def retrain_settings_from(args: argparse.Namespace) -> RetrainSettings:
    flags = {
        name: getattr(args, name)
        for name in ("interval_s", "min_new_pairs", "poll_s", "last")
        if getattr(args, name, None) is not None
    }
    if "last" in flags:
        flags["history"] = flags.pop("last")
    if getattr(args, "full", False):
        flags["full"] = True
    return RetrainSettings(**flags)


def run_train(args: argparse.Namespace) -> int:
    from learner.registry import ModelRegistry, RegistryError
    from streams.derive.snapshot_store import SnapshotError, pin_snapshot
    from streams.store.event_store import EventStore

    store_dir, settings = store_dir_from(args), learner_settings_from(args)
    gates = retrain_settings_from(args).gates
    try:
        warm_from = (
            ModelRegistry.for_store(store_dir).model_dir(args.warm_from) if args.warm_from else None
        )
        manifest, snapshot = pin_snapshot(
            EventStore(store_dir), args.snapshot, derive_config_from(args)
        )
    except (SnapshotError, RegistryError) as exc:
        raise CommandError(str(exc)) from exc
    # Model code only now: loading torch and transformers takes 8-10 s here, a refusal 1 s.
    import torch

    from learner.offline_eval import write_metrics
    from learner.pipeline import train_all
    from learner.retrain import gate_candidate
    from learner.version_eval import VersionModels

    torch.set_num_threads(1)
    console.print(
        f"snapshot {manifest.snapshot_id}: {len(snapshot.test)} users, "
        f"stream position {manifest.stream_position}"
    )
    run_dir = run_directory(args.out, args.fresh)
    with training_session(console, settings, args.in_process) as (runner, on_stage):
        models = train_or_refuse(
            lambda: train_all(
                snapshot, settings, run_dir, [args.ablation], runner, on_stage, warm_from
            )
        )
    candidate = VersionModels(
        models.vocab, models.policies[args.ablation], models.reference, models.reward_model
    )
    figures, _, _ = gate_candidate(candidate, None, None, snapshot, settings, gates)
    figures |= {"snapshot_id": manifest.snapshot_id}  # type: ignore[dict-item]
    write_metrics(args.out / "metrics.json", figures)  # type: ignore[arg-type]
    console.print(json.dumps(figures, default=str))
    console.print(f"run written to {run_dir}")
    return 0


def make_job(args: argparse.Namespace, trigger: str, runner, on_stage) -> RetrainJob:  # type: ignore[no-untyped-def]
    from learner.retrain import RetrainJob

    return RetrainJob(
        store_dir=store_dir_from(args),
        learner=learner_settings_from(args),
        settings=retrain_settings_from(args),
        runner=runner,
        trigger=trigger,
        full=getattr(args, "full", False),
        snapshot_id=getattr(args, "snapshot", None),
        derive=derive_config_from(args),
        on_stage=on_stage,
    )


def run_retrain_now(args: argparse.Namespace) -> int:
    from learner.loop_control import loop_running, request_retrain
    from learner.registry import ModelRegistry
    from streams.derive.snapshot_store import SnapshotError, read_manifest
    from streams.store.event_store import EventStore

    store = store_dir_from(args)
    registry = ModelRegistry.for_store(store)
    if args.snapshot not in (None, "latest"):
        try:
            read_manifest(EventStore(store), args.snapshot)
        except SnapshotError as exc:
            raise CommandError(f"--snapshot: {exc}") from exc
    if loop_running(registry):
        return _ask_the_loop(registry, args.wait_s)
    settings = learner_settings_from(args)
    import torch

    from learner.retrain import RetrainBusy, RetrainFailed, retrain

    torch.set_num_threads(1)
    with training_session(console, settings, args.in_process) as (runner, on_stage):
        try:
            record = retrain(make_job(args, "manual: retrain now", runner, on_stage))
        except RetrainBusy as exc:
            request_retrain(registry, "retrain now")
            raise CommandError(f"{exc}; a retrain is requested after it") from exc
        except RetrainFailed as exc:
            raise CommandError(str(exc), code=1) from exc
    _print_outcome(record)
    return 0


def _ask_the_loop(registry, wait_s: float) -> int:  # type: ignore[no-untyped-def]
    from learner.loop_control import request_retrain
    from learner.retrain_journal import read_retrains

    asked = datetime.now(UTC)
    request_retrain(registry, "retrain now")
    console.print(f"a retrain loop serves {registry.root}: retrain requested; waiting")
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        done = [r for r in read_retrains(registry) if r.started_at >= asked and r.finished_at]
        if done:
            _print_outcome(done[0])
            return 0 if done[0].state in ("registered", "skipped") else 1
        time.sleep(1)  # polling another process's files: there is nothing to wait on
    console.print(f"no retrain finished within {wait_s:g} s; it stays requested")
    return 1


def _print_outcome(record: RetrainRecord) -> None:
    if record.state != "registered":
        why = record.error or record.gate_reason
        console.print(f"retrain {record.retrain_id}: {record.state}: {why}", markup=False)
        return
    what = "promoted to production" if record.promoted else "registered as a candidate"
    console.print(
        f"retrain {record.retrain_id}: {record.version} {what} "
        f"(snapshot {record.snapshot_id}, parent {record.parent or 'none'}): {record.gate_reason}",
        markup=False,
    )


def run_retrain_status(args: argparse.Namespace) -> int:
    from learner.loop_control import read_loop_state
    from learner.registry import ModelRegistry
    from learner.retrain_journal import read_retrains

    registry = ModelRegistry.for_store(store_dir_from(args))
    settings = retrain_settings_from(args)
    loop = read_loop_state(registry)
    retrains = read_retrains(registry)[-settings.history :]
    if args.json:
        doc = {"loop": loop, "retrains": [r.model_dump(mode="json") for r in retrains]}
        print(json.dumps(doc, indent=1, default=str))
        return 0
    if loop is None:
        out.print("no retrain loop has run on this store")
    else:
        alive = "running" if loop["running"] else "not running"
        out.print(f"loop: {alive}, last state {loop['state']} since {loop['since']}")
    table = Table(title=f"last {len(retrains)} retrains, newest first")
    for column in ("retrain", "state", "version", "promoted", "seconds"):
        table.add_column(column)
    for r in reversed(retrains):
        total = sum(s.seconds for s in r.stages)
        table.add_row(r.retrain_id, r.state, r.version or "", str(r.promoted), f"{total:.1f}")
    out.print(table)
    for r in reversed(retrains):
        stages = ", ".join(f"{s.stage} {s.seconds:.1f} s" for s in r.stages)
        out.print(f"{r.retrain_id} ({r.trigger}): {stages}", markup=False)
        out.print(
            f"  snapshot {r.snapshot_id} at {r.stream_position}; parent {r.parent}; "
            f"{r.gate_reason or r.error or ''}",
            markup=False,
        )
    return 0


def run_serve_loop(args: argparse.Namespace) -> int:
    import torch

    from learner.loop_control import LoopAlreadyRunning
    from learner.ray_jobs import RayStageRunner
    from learner.retrain_loop import RetrainLoop

    torch.set_num_threads(1)
    store_dir, settings = store_dir_from(args), retrain_settings_from(args)
    learner_settings_from(args)  # refuse a bad --settings now, not at the first retrain
    stop = threading.Event()
    with training_session(console, learner_settings_from(args), args.in_process) as (
        runner,
        on_stage,
    ):
        if isinstance(runner, RayStageRunner):
            runner.connect()  # now: ray.init installs its own SIGTERM handler, ours goes after
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
        loop = RetrainLoop(
            store_dir,
            settings,
            lambda trigger: make_job(args, trigger, runner, on_stage),
            on_retrain=_print_outcome,
        )
        with contextlib.suppress(KeyboardInterrupt):
            try:
                loop.run(stop)
            except LoopAlreadyRunning as exc:
                raise CommandError(str(exc)) from exc
    console.print("retrain loop stopped")
    return 0
