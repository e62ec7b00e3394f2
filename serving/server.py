"""The serving process: a local Ray (or the cluster of ``RAY_ADDRESS``), Ray Serve's HTTP proxy
on the configured address, and the page application, until SIGTERM or Ctrl-C.

``pagellm serve start`` runs this detached and waits until ``/v1/health`` answers; its state
file (``run_dir/server.json``: pid, url) is how ``stop``, ``status`` and ``page`` find it.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

from deploy.local_kafka import free_port
from serving.settings import ServingSettings
from streams.settings import StreamSettings

log = logging.getLogger(__name__)

STATE_FILE, LOG_FILE = "server.json", "server.log"
APP_NAME = "pagellm"


@dataclass(frozen=True)
class ServerState:
    pid: int
    url: str
    store_dir: str
    started_at: str


def read_state(run_dir: Path) -> ServerState | None:
    path = run_dir / STATE_FILE
    if not path.exists():
        return None
    return ServerState(**json.loads(path.read_text()))


def spawn_server(env: dict[str, str], run_dir: Path) -> subprocess.Popen[bytes]:
    """This module as a process of its own session (stopped by whoever started it, not by a
    terminal's Ctrl-C), configured by ``env``, logging to ``run_dir/server.log``."""
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / LOG_FILE, "ab") as log_file:
        return subprocess.Popen(
            [sys.executable, "-m", "serving.server"],
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )


def serve_until_stopped(serving: ServingSettings, streams: StreamSettings) -> int:
    import ray
    from ray import serve

    from serving.app import build_app

    port = serving.port or free_port()
    serving = serving.model_copy(update={"port": port})
    ray.init(address=os.environ.get("RAY_ADDRESS"), include_dashboard=False, log_to_driver=False)
    stop = threading.Event()
    # After ray.init: it installs a SIGTERM handler of its own that would end us abruptly.
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    state_path = serving.run_dir / STATE_FILE
    try:
        serve.start(http_options={"host": serving.host, "port": port})
        app = build_app(serving.model_dump(mode="json") | streams.model_dump(mode="json"))
        serve.run(app, name=APP_NAME, route_prefix="/")
        url = f"http://{serving.host}:{port}"
        serving.run_dir.mkdir(parents=True, exist_ok=True)
        state = ServerState(os.getpid(), url, str(streams.store_dir), datetime.now(UTC).isoformat())
        state_path.write_text(json.dumps(asdict(state)))
        log.info("serving pages at %s (OpenAPI at %s/docs)", url, url)
        stop.wait()
        log.info("stopping: draining requests and the impression spool")
    finally:
        state_path.unlink(missing_ok=True)
        serve.shutdown()
        ray.shutdown()
    return 0


def main() -> int:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("kafka").setLevel(logging.WARNING)
    return serve_until_stopped(ServingSettings(), StreamSettings())


if __name__ == "__main__":
    sys.exit(main())
