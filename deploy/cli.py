"""``pagellm`` subcommands that start things: the local broker and the demo."""

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

    demo = commands.add_parser("demo", help="run the main job on an embedded default")
    demo.add_argument("--events", type=int, default=20_000)
    demo.add_argument("--workers", type=int, default=2)
    demo.add_argument(
        "--invalid-every",
        type=int,
        default=250,
        help="make every Nth event invalid (0: none) to show the dead-letter path",
    )
    demo.add_argument("--root", type=Path, default=Path("var/demo"))
    demo.add_argument("--timeout", type=float, default=300.0)
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


def run_demo_command(args: argparse.Namespace) -> int:
    from deploy.demo import run_demo

    return run_demo(args.events, args.workers, args.invalid_every, args.root, args.timeout)
