"""``pagellm`` subcommands that start things: the local broker and the main job (the demo)."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console

console = Console(soft_wrap=True)


def register(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    kafka = commands.add_parser("kafka", help="a local single-node Kafka broker")
    kafka.add_argument("action", choices=["start", "stop", "status", "fetch-jars"])
    kafka.add_argument("--run-dir", type=Path, default=Path("var/kafka"))
    kafka.add_argument("--port", type=int, help="broker port (default: a free one)")
    kafka.set_defaults(run=run_kafka)

    status = commands.add_parser(
        "status", help="broker, workers and their lag, retrains, versions, experiments, serving"
    )
    status.add_argument("--store", dest="store_dir", type=Path, help="event store (var/store)")
    status.add_argument("--bootstrap", dest="kafka_bootstrap", help="Kafka bootstrap servers")
    status.add_argument("--run-dir", type=Path, help="the server's state (PAGELLM_SERVE_RUN_DIR)")
    status.add_argument("--json", action="store_true", help="one JSON document")
    status.set_defaults(run=run_status)

    demo = commands.add_parser(
        "demo",
        help="the closed loop: broker, workers, training, serving, simulated users, A/B decision",
    )
    demo.add_argument("--root", type=Path, help="store, registry and logs (var/demo)")
    demo.add_argument("--budget-s", type=float, help="the whole run at most, seconds (570)")
    demo.add_argument("--retrain-every-s", type=float, help="retrain interval in traffic (90)")
    demo.add_argument(
        "--retrains", type=int, help="end traffic after this many retrains (at the budget)"
    )
    demo.add_argument("--users", type=int, help="simulated users (400)")
    demo.add_argument("--seed", type=int, help="the simulated world's seed (7)")
    demo.add_argument("--ratings", type=Path, help="tastes and history from a ratings file")
    demo.add_argument(
        "--ratings-format", choices=["movielens", "generic", "amazon"], help="(movielens)"
    )
    demo.add_argument("--settings", type=Path, help="LearnerSettings JSON (the paper's)")
    demo.set_defaults(run=run_demo_command)


def run_kafka(args: argparse.Namespace) -> int:
    from deploy.local_kafka import LocalKafka, ensure_jars

    kafka = LocalKafka(args.run_dir)
    if args.action == "fetch-jars":
        console.print(f"broker jars in {ensure_jars()}")
    elif args.action == "start":
        state = kafka.start(port=args.port)
        console.print(
            f"Kafka at {state.bootstrap} (pid {state.pid})\n"
            f"export PAGELLM_KAFKA_BOOTSTRAP={state.bootstrap}"
        )
    elif args.action == "stop":
        console.print("stopped" if kafka.stop() else "no broker was running")
    else:
        state = kafka.state()
        console.print(f"running at {state.bootstrap} (pid {state.pid})" if state else "not running")
        return 0 if state else 1
    return 0


def run_status(args: argparse.Namespace) -> int:
    """Exit 1 when a part that has run is down (the broker, the derive worker, the server)."""
    import logging

    from deploy.platform_status import as_json, collect_status, render
    from serving.settings import ServingSettings
    from streams.cli import settings_from

    # A broker that is down is an answer here; the client's reconnect errors are not news.
    logging.getLogger("kafka").setLevel(logging.CRITICAL)

    status = collect_status(settings_from(args), args.run_dir or ServingSettings().run_dir)
    if args.json:
        print(as_json(status))
    else:
        render(status, console)
    return 1 if status.problems else 0


def run_demo_command(args: argparse.Namespace) -> int:
    from deploy.closed_loop import LoopSettings
    from deploy.demo import run_demo
    from deploy.simulated_users import SimulatorSettings

    def given(**flags: object) -> dict[str, object]:
        return {name: value for name, value in flags.items() if value is not None}

    loop = LoopSettings(
        **given(
            root=args.root,
            budget_s=args.budget_s,
            retrain_every_s=args.retrain_every_s,
            retrains=args.retrains,
            learner_settings=args.settings,
        )
    )
    users = SimulatorSettings(
        **given(
            users=args.users,
            seed=args.seed,
            ratings_path=args.ratings,
            ratings_format=args.ratings_format,
        )
    )
    return run_demo(loop, users)
