"""A real single-node Kafka (KRaft, broker + controller) on 127.0.0.1, from the official jars.

The jars are resolved from Maven Central with ``mvn`` (``deploy/kafka/pom.xml`` pins the
version) into a cache outside git. A broker's run directory holds its config, data, log and a
state file; starting a broker whose state file names a live, answering process is a no-op.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

from streams.ingest.worker_process import process_alive

log = logging.getLogger(__name__)

KAFKA_VERSION = "4.4.0"
_KAFKA_FILES = Path(__file__).parent / "kafka"
_STATE_FILE = "broker.json"


class KafkaStartError(RuntimeError):
    """The broker could not be resolved, formatted or started; the message says which."""


def cache_dir() -> Path:
    """Where the broker jars live: ``$PAGELLM_CACHE_DIR`` or ``~/.cache/pagellm``."""
    root = os.environ.get("PAGELLM_CACHE_DIR") or Path.home() / ".cache" / "pagellm"
    return Path(root) / f"kafka-{KAFKA_VERSION}"


def ensure_jars() -> Path:
    """Resolve the broker's jars with Maven once; returns the directory holding them."""
    libs = cache_dir() / "libs"
    done = cache_dir() / ".complete"
    if done.exists():
        return libs
    if shutil.which("mvn") is None:
        raise KafkaStartError("`mvn` is not on PATH; it is needed once to fetch the broker jars")
    if shutil.which("java") is None:
        raise KafkaStartError("`java` (17 or newer) is not on PATH; the broker runs on it")
    log.info("resolving Kafka %s jars from Maven Central into %s", KAFKA_VERSION, libs)
    staging = cache_dir() / ".libs-staging"
    shutil.rmtree(staging, ignore_errors=True)
    cmd = [
        "mvn",
        "-q",
        "-B",
        "-f",
        str(_KAFKA_FILES / "pom.xml"),
        "dependency:copy-dependencies",
        f"-DoutputDirectory={staging}",
        "-DincludeScope=runtime",
    ]
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise KafkaStartError(
            f"mvn could not resolve the broker jars:\n{result.stdout}{result.stderr}"
        )
    shutil.rmtree(libs, ignore_errors=True)
    staging.rename(libs)
    done.touch()
    return libs


def new_cluster_id() -> str:
    """A KRaft cluster id as ``StorageTool random-uuid`` makes one (without its JVM's 2.5 s of
    CPU): 16 random bytes in URL-safe base64 without padding, never starting with '-'."""
    while True:
        text = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        if not text.startswith("-"):  # a command line would take it for a flag
            return text


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def accepts_connections(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


@dataclass
class BrokerState:
    pid: int
    port: int
    controller_port: int

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"


class LocalKafka:
    """One local broker rooted at ``run_dir``."""

    def __init__(self, run_dir: Path | str, heap: str = "768m") -> None:
        self.run_dir = Path(run_dir).resolve()
        self.heap = heap

    @property
    def state_path(self) -> Path:
        return self.run_dir / _STATE_FILE

    @property
    def log_path(self) -> Path:
        return self.run_dir / "broker.log"

    def state(self) -> BrokerState | None:
        """The running broker's state, or None if none is running here."""
        try:
            state = BrokerState(**json.loads(self.state_path.read_text()))
        except (OSError, ValueError, TypeError):
            return None
        return state if process_alive(state.pid) else None

    def _java(self, libs: Path, *args: str, tool: bool = False) -> list[str]:
        # A tool runs for a second or two: the optimising compiler and G1's threads cost it
        # CPU they never pay back (StorageTool format: 2.1-2.5 s of CPU, 1.3-1.5 s without).
        collector = ["-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1"] if tool else ["-XX:+UseG1GC"]
        return [
            "java",
            "-Xms256m",
            f"-Xmx{self.heap}",
            *collector,
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={_KAFKA_FILES / 'log4j2.properties'}",
            "-cp",
            f"{libs}/*",
            *args,
        ]

    def _write_config(self, port: int, controller_port: int) -> Path:
        data = self.run_dir / "data"
        config = self.run_dir / "server.properties"
        config.write_text(
            "\n".join(
                [
                    "process.roles=broker,controller",
                    "node.id=1",
                    f"controller.quorum.bootstrap.servers=127.0.0.1:{controller_port}",
                    f"listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}",
                    f"advertised.listeners=PLAINTEXT://127.0.0.1:{port}",
                    "controller.listener.names=CONTROLLER",
                    "inter.broker.listener.name=PLAINTEXT",
                    "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
                    f"log.dirs={data}",
                    "num.partitions=1",
                    "offsets.topic.replication.factor=1",
                    "offsets.topic.num.partitions=4",
                    "transaction.state.log.replication.factor=1",
                    "transaction.state.log.min.isr=1",
                    "share.coordinator.state.topic.replication.factor=1",
                    "share.coordinator.state.topic.min.isr=1",
                    "group.initial.rebalance.delay.ms=0",
                    "auto.create.topics.enable=false",
                ]
            )
            + "\n"
        )
        return config

    def start(self, port: int | None = None, timeout_s: float = 90.0) -> BrokerState:
        """Start the broker (or return the one already running here) and wait until it serves."""
        running = self.state()
        if running is not None and accepts_connections(running.port):
            log.info("Kafka already running at %s (pid %d)", running.bootstrap, running.pid)
            return running
        libs = ensure_jars()
        # A fresh data directory each start: ports are chosen anew, and KRaft records the
        # controller's endpoint in its log, so old data would point at a stale port.
        shutil.rmtree(self.run_dir, ignore_errors=True)
        self.run_dir.mkdir(parents=True)
        port = port or free_port()
        controller_port = free_port()
        config = self._write_config(port, controller_port)
        fmt = subprocess.run(
            self._java(
                libs,
                "kafka.tools.StorageTool",
                "format",
                "--standalone",
                "-t",
                new_cluster_id(),
                "-c",
                str(config),
                tool=True,
            ),
            capture_output=True,
            text=True,
            check=False,
        )
        if fmt.returncode != 0:
            raise KafkaStartError(f"formatting Kafka storage failed:\n{fmt.stdout}{fmt.stderr}")
        return self._launch(libs, config, port, controller_port, timeout_s)

    def resume(self, stopped: BrokerState, timeout_s: float = 90.0) -> BrokerState:
        """Start a broker stopped by ``stop`` again, on its ports and with its data: what a
        broker restart looks like to clients."""
        config = self.run_dir / "server.properties"
        if not config.exists():
            raise KafkaStartError(f"no broker configuration in {self.run_dir} to resume")
        return self._launch(ensure_jars(), config, stopped.port, stopped.controller_port, timeout_s)

    def _launch(
        self, libs: Path, config: Path, port: int, controller_port: int, timeout_s: float
    ) -> BrokerState:
        with open(self.log_path, "ab") as out:
            proc = subprocess.Popen(
                self._java(libs, "kafka.Kafka", str(config)),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        state = BrokerState(pid=proc.pid, port=port, controller_port=controller_port)
        self.state_path.write_text(json.dumps(asdict(state)))
        self._wait_ready(state, proc, timeout_s)
        log.info("Kafka %s started at %s (pid %d)", KAFKA_VERSION, state.bootstrap, proc.pid)
        return state

    def _wait_ready(
        self, state: BrokerState, proc: subprocess.Popen[bytes], timeout_s: float
    ) -> None:
        from kafka import KafkaAdminClient
        from kafka.errors import KafkaError

        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise KafkaStartError(
                    f"the broker exited with {proc.returncode}; its log:\n{self._log_tail()}"
                )
            if accepts_connections(state.port):
                try:
                    admin = KafkaAdminClient(
                        bootstrap_servers=state.bootstrap, request_timeout_ms=5000
                    )
                    admin.list_topics()
                    admin.close()
                    return
                except KafkaError:
                    pass
            time.sleep(0.2)
        self.stop()
        raise KafkaStartError(
            f"the broker did not serve within {timeout_s:.0f} s:\n{self._log_tail()}"
        )

    def _log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self, timeout_s: float = 30.0) -> bool:
        """Stop the broker cleanly (SIGTERM, then SIGKILL); False if none was running."""
        state = self.state()
        if state is None:
            self.state_path.unlink(missing_ok=True)
            return False
        with contextlib.suppress(ProcessLookupError):
            os.killpg(state.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        while process_alive(state.pid) and time.monotonic() < deadline:
            _reap(state.pid)
            time.sleep(0.1)
        if process_alive(state.pid):
            log.warning(
                "broker pid %d ignored SIGTERM for %.0f s; killing it", state.pid, timeout_s
            )
            with contextlib.suppress(ProcessLookupError):
                os.killpg(state.pid, signal.SIGKILL)
            _reap(state.pid)
        self.state_path.unlink(missing_ok=True)
        return True


def _reap(pid: int) -> None:
    """Collect the exit status if the broker is our child, so it does not linger as a zombie."""
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)
