"""Shared fixtures: one real Kafka broker for the session, a fresh topic pair and store per test."""

from __future__ import annotations

import logging
import os
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from kafka import KafkaConsumer

from deploy.local_kafka import LocalKafka
from streams.ingest.topics import ensure_topics
from streams.ingest.worker_process import spawn_worker, stop_worker
from streams.settings import StreamSettings
from streams.store.event_store import EventStore

log = logging.getLogger(__name__)

# `make test` hands whole modules to two workers (pytest -n 2 --dist loadfile), in collection
# order: these, the longest (measured), go first so that none of them starts last.
LONGEST_MODULES = (
    "test_ray_training",
    "test_serving_api",
    "test_closed_loop",
    "test_retrain_loop",
    "test_recovery",
    "test_retrain",
    "test_ab_simulation",
    "test_ab_phases",
)


WORKER_LOG_LINES = 80


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """A failed test that started ingest workers shows the end of each one's log: a timeout
    under load is otherwise not diagnosable after the fact."""
    report = yield
    if report.failed and call.when == "call":
        for path in getattr(item, "worker_logs", ()):
            lines = path.read_text(errors="replace").splitlines() if path.exists() else []
            report.sections.append(
                (f"worker log {path.name}", "\n".join(lines[-WORKER_LOG_LINES:]))
            )
    return report


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {module: i for i, module in enumerate(LONGEST_MODULES)}
    items.sort(key=lambda item: rank.get(item.path.stem, len(rank)))  # stable: file order kept


def wait_for(
    condition: Callable[[], object], timeout_s: float, what: str, interval_s: float = 0.1
) -> object:
    """Poll ``condition`` until it returns something truthy; fail naming ``what`` on timeout.

    A costly condition (a scan of a store of 100 files takes 0.4-0.9 s here) is polled at most
    a third of the time: polled back to back it would take a core from the processes it waits
    on, on a machine of two."""
    deadline = time.monotonic() + timeout_s
    while True:
        asked = time.monotonic()
        value = condition()
        if value:
            return value
        now = time.monotonic()
        if now > deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(max(interval_s, 2 * (now - asked)))


def waiting_on_a_file_lock(pid: int) -> bool:
    """Whether process ``pid`` is blocked on a ``flock`` (a ``->`` line of /proc/locks)."""
    lines = Path("/proc/locks").read_text().splitlines()
    return any(f[1:3] == ["->", "FLOCK"] and f[5] == str(pid) for f in map(str.split, lines))


def read_topic(settings: StreamSettings, topic: str, expected: int) -> list:
    """At least ``expected`` records of ``topic`` from its start (fails after 60 s)."""
    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=settings.kafka_bootstrap,
        auto_offset_reset="earliest",
        group_id=None,
        consumer_timeout_ms=1000,
    )
    records: list = []
    try:
        wait_for(
            lambda: records.extend(consumer) or len(records) >= expected,
            60,
            f"{expected} records on {topic}",
            interval_s=0,
        )
    finally:
        consumer.close()
    return records


def _docker_engine_available() -> bool:
    try:
        import docker

        docker.from_env(timeout=2).ping()
    except Exception:
        return False
    return True


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """An existing cluster (PAGELLM_KAFKA_BOOTSTRAP), testcontainers' Kafka, or a local broker."""
    existing = os.environ.get("PAGELLM_KAFKA_BOOTSTRAP")
    if existing:
        yield existing
        return
    if _docker_engine_available():
        from testcontainers.kafka import KafkaContainer

        with KafkaContainer() as container:
            yield container.get_bootstrap_server()
        return
    broker = LocalKafka(tmp_path_factory.mktemp("kafka"))
    state = broker.start()
    try:
        yield state.bootstrap
    finally:
        broker.stop()


@pytest.fixture
def store(tmp_path: Path) -> EventStore:
    """An initialised, empty event store of this test's own."""
    s = EventStore(tmp_path / "store")
    s.init()
    return s


@pytest.fixture
def settings(kafka_bootstrap: str, tmp_path: Path) -> StreamSettings:
    """Settings with a topic pair, consumer group and store of this test's own."""
    name = uuid.uuid4().hex[:10]
    s = StreamSettings(
        kafka_bootstrap=kafka_bootstrap,
        events_topic=f"events-{name}",
        dead_letter_topic=f"events-{name}.dlq",
        catalogue_topic=f"catalogue-{name}",
        consumer_group=f"ingest-{name}",
        store_dir=tmp_path / "store",
        partitions=4,
        batch_max_events=2000,
        batch_max_wait_s=0.2,
    )
    ensure_topics(s)
    EventStore(s.store_dir).init()
    return s


@pytest.fixture
def workers(
    settings: StreamSettings, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    """Start ingest worker processes on demand; all are stopped (or killed) after the test."""
    started: list[subprocess.Popen[bytes]] = []
    request.node.worker_logs = []

    def start(writer_id: str = "w0", use: StreamSettings | None = None) -> subprocess.Popen[bytes]:
        log_path = tmp_path / "logs" / f"{writer_id}-{len(started)}.log"
        proc = spawn_worker(use or settings, writer_id, log_path)
        proc.log_path = log_path  # type: ignore[attr-defined]
        started.append(proc)
        request.node.worker_logs.append(log_path)
        return proc

    yield start
    for proc in started:
        stop_worker(proc, timeout_s=20)
