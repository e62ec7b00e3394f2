"""``pagellm serve start | run | stop | status | register-popularity`` and ``pagellm page USER``."""

from __future__ import annotations

import argparse
import json
import os
import signal
import time
from pathlib import Path

import httpx
from rich.console import Console
from rich.table import Table

from learner.command_options import CommandError, add_store_flag, refusing
from serving.server import LOG_FILE, ServerState, read_state, spawn_server
from serving.settings import ServingSettings
from streams.cli import settings_from
from streams.ingest.worker_process import process_alive

console = Console(stderr=True, soft_wrap=True)
out = Console(soft_wrap=True)


def register(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    serve = commands.add_parser("serve", help="serve pages from the live model versions")
    actions = serve.add_subparsers(dest="action", required=True, metavar="ACTION")

    start = actions.add_parser("start", help="start the server in the background")
    start.add_argument("--timeout", type=float, default=180.0, help="seconds to wait for it")
    run = actions.add_parser("run", help="run the server in the foreground until Ctrl-C")
    for parser in (start, run):
        parser.add_argument("--host", help="address to bind (PAGELLM_SERVE_HOST, 127.0.0.1)")
        parser.add_argument("--port", type=int, help="port (PAGELLM_SERVE_PORT, 8000; 0: free)")
        parser.add_argument("--bootstrap", dest="kafka_bootstrap", help="Kafka for impressions")
        parser.add_argument("--topic", dest="events_topic", help="the events topic")
    start.set_defaults(run=refusing(console, run_start, "serve start"))
    run.set_defaults(run=refusing(console, run_foreground, "serve run"))

    stop = actions.add_parser("stop", help="stop the server (it delivers its spool first)")
    stop.add_argument("--timeout", type=float, default=60.0)
    stop.set_defaults(run=refusing(console, run_stop, "serve stop"))

    status = actions.add_parser("status", help="health, live versions, impression spool")
    status.add_argument("--json", action="store_true", help="the health and versions as JSON")
    status.set_defaults(run=refusing(console, run_status, "serve status"))

    popularity = actions.add_parser(
        "register-popularity", help="register the store's popularity ranking as a version"
    )
    popularity.set_defaults(
        run=refusing(console, run_register_popularity, "serve register-popularity")
    )

    for parser in (start, run, stop, status, popularity):
        add_store_flag(parser)
        parser.add_argument("--run-dir", type=Path, help="state and log (PAGELLM_SERVE_RUN_DIR)")

    page = commands.add_parser("page", help="ask the running server for a user's page")
    page.add_argument("user_id")
    page.add_argument("-k", type=int, default=10, help="items on the page")
    page.add_argument("--exclude", nargs="*", default=[], help="items the page must not hold")
    page.add_argument("--url", help="the server (default: the one `serve start` started)")
    page.add_argument("--run-dir", type=Path, help="state of `serve start` (PAGELLM_SERVE_RUN_DIR)")
    page.add_argument("--json", action="store_true", help="the response as it came")
    page.set_defaults(run=refusing(console, run_page, "page"))


def serving_settings(args: argparse.Namespace) -> ServingSettings:
    overrides = {
        name: getattr(args, name)
        for name in ("host", "port", "run_dir")
        if getattr(args, name, None) is not None
    }
    return ServingSettings(**overrides)


def server_env(args: argparse.Namespace) -> dict[str, str]:
    """The server process's environment: ours, with the flags as PAGELLM_* variables."""
    streams, serving = settings_from(args), serving_settings(args)
    return os.environ | {
        "PAGELLM_STORE_DIR": str(Path(streams.store_dir).resolve()),
        "PAGELLM_KAFKA_BOOTSTRAP": streams.kafka_bootstrap,
        "PAGELLM_EVENTS_TOPIC": streams.events_topic,
        "PAGELLM_SERVE_HOST": serving.host,
        "PAGELLM_SERVE_PORT": str(serving.port),
        "PAGELLM_SERVE_RUN_DIR": str(serving.run_dir.resolve()),
    }


def running_server(run_dir: Path) -> ServerState | None:
    state = read_state(run_dir)
    return state if state is not None and process_alive(state.pid) else None


def run_start(args: argparse.Namespace) -> int:
    run_dir = serving_settings(args).run_dir
    if (state := running_server(run_dir)) is not None:
        raise CommandError(f"a server already runs at {state.url} (pid {state.pid})", code=1)
    proc = spawn_server(server_env(args), run_dir)
    deadline = time.monotonic() + args.timeout
    with console.status("starting Ray Serve and loading the live versions..."):
        while True:
            state = read_state(run_dir)
            if state is not None and state.pid == proc.pid and health(state.url) is not None:
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                if proc.poll() is None:
                    os.killpg(proc.pid, signal.SIGTERM)
                tail = (run_dir / LOG_FILE).read_text(errors="replace").splitlines()[-20:]
                why = (
                    "exited"
                    if proc.returncode is not None
                    else f"was not up in {args.timeout:.0f} s"
                )
                raise CommandError(f"the server {why}; its log:\n" + "\n".join(tail), code=1)
            time.sleep(0.2)
    out.print(f"serving at {state.url} (pid {state.pid}); API docs at {state.url}/docs")
    return 0


def run_foreground(args: argparse.Namespace) -> int:
    from serving.server import serve_until_stopped

    return serve_until_stopped(serving_settings(args), settings_from(args))


def run_stop(args: argparse.Namespace) -> int:
    run_dir = serving_settings(args).run_dir
    state = running_server(run_dir)
    if state is None:
        out.print("no server is running")
        return 0
    os.kill(state.pid, signal.SIGTERM)
    deadline = time.monotonic() + args.timeout
    while process_alive(state.pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    if process_alive(state.pid):
        os.killpg(state.pid, signal.SIGKILL)
        raise CommandError(f"the server ignored SIGTERM for {args.timeout:.0f} s; killed", code=1)
    out.print(f"stopped the server at {state.url}")
    return 0


def health(url: str) -> dict[str, object] | None:
    try:
        response = httpx.get(f"{url}/v1/health", timeout=5)
    except httpx.HTTPError:
        return None
    return response.json() if response.status_code == 200 else None


def run_status(args: argparse.Namespace) -> int:
    state = running_server(serving_settings(args).run_dir)
    if state is None:
        raise CommandError("no server is running (start one with `pagellm serve start`)", code=1)
    found = health(state.url)
    if found is None:
        raise CommandError(f"the server (pid {state.pid}) does not answer at {state.url}", code=1)
    versions = httpx.get(f"{state.url}/v1/versions", timeout=5).json()
    if args.json:
        out.print_json(json.dumps({"url": state.url, "health": found, "versions": versions}))
        return 0
    spool = found["impressions"]
    out.print(f"{state.url}: {found['status']} {'; '.join(found['reasons'])}", markup=False)  # type: ignore[arg-type]
    out.print(
        f"impression spool: {spool['pending']} pending of {spool['bound']}, "  # type: ignore[index]
        f"{spool['delivered']} delivered, {spool['dropped']} dropped"  # type: ignore[index]
    )
    table = Table("version", "kind", "status", "serves", "loaded at")
    for v in versions["versions"]:
        table.add_row(v["version"], v["kind"], v["status"], ", ".join(v["serves"]), v["loaded_at"])
    out.print(table)
    return 0


def run_register_popularity(args: argparse.Namespace) -> int:
    from learner.command_options import store_dir_from
    from serving.popularity import register_store_popularity

    try:
        record = register_store_popularity(store_dir_from(args))
    except ValueError as exc:
        raise CommandError(str(exc), code=1) from None
    out.print(f"registered {record.version} (popularity over {record.metrics['items']:.0f} items)")
    return 0


def run_page(args: argparse.Namespace) -> int:
    url = args.url
    if url is None:
        state = running_server(serving_settings(args).run_dir)
        if state is None:
            raise CommandError("no server is running; start one or give --url", code=1)
        url = state.url
    body = {"user_id": args.user_id, "k": args.k, "exclude": args.exclude}
    try:
        response = httpx.post(f"{url}/v1/page", json=body, timeout=30)
    except httpx.HTTPError as exc:
        raise CommandError(f"{url}: {exc}", code=1) from None
    if response.status_code != 200:
        try:
            detail = response.json().get("detail")
        except ValueError:
            detail = response.text
        raise CommandError(f"{response.status_code}: {detail}", code=1)
    page = response.json()
    if args.json:
        out.print_json(response.text)
        return 0
    where = f"{page['experiment']}/{page['variant']}" if page.get("experiment") else "production"
    out.print(f"{page['model_version']} ({where}), request {page['request_id']}", markup=False)
    if page.get("fallback_reason"):
        out.print(f"fallback: {page['fallback_reason']}", markup=False)
    for slot in page["items"]:
        out.print(f"{slot['position']:>3}  {slot['item_id']}", markup=False)
    return 0
