"""The one console script, ``pagellm``: each package registers its own subcommands."""

from __future__ import annotations

import argparse
import logging
import sys

from pydantic import ValidationError

from abtest import cli as abtest_cli
from deploy import cli as deploy_cli
from learner import cli as learner_cli
from schemas.events import describe_validation_error
from serving import cli as serving_cli
from streams import cli as streams_cli

# Client libraries log every connection (httpx: every request) at INFO; keep logs readable.
_CHATTY_LOGGERS = ("kafka", "aiokafka", "faust", "mode", "httpx")


def configure_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if not verbose:
        for name in _CHATTY_LOGGERS:
            logging.getLogger(name).setLevel(logging.WARNING)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pagellm",
        description="Streaming online-learning platform for whole-page recommendation.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    deploy_cli.register(commands)
    streams_cli.register(commands)
    abtest_cli.register(commands)
    learner_cli.register(commands)
    serving_cli.register(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(args.verbose)
    try:
        return int(args.run(args) or 0)
    except ValidationError as exc:  # a setting from a flag or a PAGELLM_* variable
        print(f"pagellm: invalid setting: {describe_validation_error(exc)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
