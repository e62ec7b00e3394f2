"""The closed loop, shortened: a real broker, real worker processes, a real local Ray with Ray
Serve, simulated users over HTTP, a retrain while traffic flows, the report and the decision;
and afterwards nothing it started is left running."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace

import pytest
from rich.console import Console

from abtest.metrics import MetricName
from deploy.closed_loop import MIN_TRAFFIC_S, ClosedLoop, LoopOutcome, LoopSettings
from deploy.simulated_users import SimulatorSettings
from deploy.user_simulator import TrafficLog
from learner.registry import ModelRegistry
from learner.settings import LearnerSettings
from schemas.model_registry import RetrainRecord
from streams.ingest.worker_process import process_alive
from streams.store.store_views import connect_store
from tests.conftest import wait_for
from tests.test_offline_eval import TINY

# The loop's traffic runs to wall-clock time: `make test` runs its tests alone, not beside others.
alone = pytest.mark.serial

USERS = SimulatorSettings(
    users=120, categories=4, items_per_category=10, history_min=14, history_max=22, clients=2
)


def processes_naming(text: str) -> list[int]:
    """Pids of the processes whose command line holds ``text``."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if text.encode() in cmdline.read_bytes():
                found.append(int(cmdline.parent.name))
        except OSError:
            continue  # it ended while we looked
    return found


def loop_env(kafka_bootstrap: str) -> dict[str, str]:
    """Topics and a consumer group of the loop's own on the session's broker."""
    name = uuid.uuid4().hex[:10]
    return {
        "PAGELLM_KAFKA_BOOTSTRAP": kafka_bootstrap,
        "PAGELLM_EVENTS_TOPIC": f"loop-{name}",
        "PAGELLM_DEAD_LETTER_TOPIC": f"loop-{name}.dlq",
        "PAGELLM_CATALOGUE_TOPIC": f"loop-catalogue-{name}",
        "PAGELLM_CONSUMER_GROUP": f"loop-{name}",
        "PAGELLM_BATCH_MAX_WAIT_S": "0.2",
    }


def tiny_learner(path: Path) -> Path:
    path.write_text(LearnerSettings.model_validate(TINY).model_dump_json())
    return path


def descendants(root: int) -> set[int]:
    """Every process whose chain of parents leads to ``root``."""
    parent = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent[int(stat.parent.name)] = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue  # it ended while we looked
    found, frontier = set(), {root}
    while frontier:
        frontier = {pid for pid, ppid in parent.items() if ppid in frontier} - found
        found |= frontier
    return found


def test_traffic_goes_on_until_each_variant_has_shown_pages_to_enough_users(
    tmp_path: Path,
) -> None:
    # On a slow hour 30 s of traffic exposed too few users, and the report withheld its results.
    settings = LoopSettings(root=tmp_path, retrains=1, min_users_per_variant=3)
    loop = ClosedLoop(settings, USERS, Console(file=io.StringIO()))
    loop.outcome.retrains.append(
        RetrainRecord(retrain_id="r", trigger="t", state="registered", started_at=datetime.now(UTC))
    )
    simulator = SimpleNamespace(log=TrafficLog())
    began = time.monotonic() - MIN_TRAFFIC_S
    simulator.log.tallies["pagellm"].users.update({"u1", "u2", "u3"})
    simulator.log.tallies["popularity"].users.update({"u1", "u2"})
    assert not loop.traffic_done(simulator, began, 0)  # type: ignore[arg-type]
    simulator.log.tallies["popularity"].users.add("u4")
    assert loop.traffic_done(simulator, began, 0)  # type: ignore[arg-type]
    assert not loop.traffic_done(simulator, time.monotonic(), 0)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def loop_run(
    kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory
) -> tuple[LoopOutcome, LoopSettings]:
    root = tmp_path_factory.mktemp("loop")
    settings = LoopSettings(
        root=root / "run",
        budget_s=360,  # a ceiling for slow machines: the run ends after its retrain
        finish_reserve_s=15,
        retrain_every_s=5,
        retrains=1,
        learner_settings=tiny_learner(root / "learner.json"),
        prompt_length=5,
        min_users_per_variant=30,
    )
    with pytest.MonkeyPatch.context() as patch:
        for variable, value in loop_env(kafka_bootstrap).items():
            patch.setenv(variable, value)
        outcome = ClosedLoop(settings, USERS, Console(file=io.StringIO())).run()
    return outcome, settings


@pytest.mark.kafka
@alone
def test_feedback_flows_through_kafka_into_the_store_and_nothing_is_lost(
    loop_run: tuple[LoopOutcome, LoopSettings],
) -> None:
    outcome, settings = loop_run
    con = connect_store(settings.root / "store")
    counts = dict(con.execute("SELECT type, count(*) FROM events GROUP BY 1").fetchall())
    assert counts["rating"] == outcome.bootstrap_events > 0
    assert counts["impression"] > 0 and counts["click"] > 0
    assert len(outcome.produced) == outcome.stored_feedback  # every click and purchase
    assert outcome.failed_requests == 0, outcome.last_request_error
    assert counts["impression"] == outcome.pages_served  # every page served, once
    served = con.execute(
        "SELECT count(DISTINCT user_id), count(DISTINCT variant) FROM impressions "
        "WHERE experiment = 'pagellm-vs-popularity'"
    ).fetchone()
    assert served[0] > 50 and served[1] == 2  # type: ignore[index]


@pytest.mark.kafka
@alone
def test_a_trained_version_is_served_and_a_retrain_registers_another(
    loop_run: tuple[LoopOutcome, LoopSettings],
) -> None:
    outcome, settings = loop_run
    first, *later = outcome.retrains
    assert first.state == "registered" and first.promoted and first.version == "v1"
    assert any(r.state == "registered" and r.version for r in later), later
    assert outcome.traffic_ended_on == "retrains"  # settings.retrains, not the budget
    registry = ModelRegistry.for_store(settings.root / "store")
    kinds = {v.version: v.kind for v in registry.versions()}
    assert kinds["v2"] == "popularity" and kinds["v1"] == kinds["v3"] == "pagellm"
    con = connect_store(settings.root / "store")
    served = dict(
        con.execute(
            "SELECT variant, list(DISTINCT model_version) FROM impressions GROUP BY 1"
        ).fetchall()
    )
    assert served["popularity"] == ["v2"]
    assert "v1" in served["pagellm"]


@pytest.mark.kafka
@alone
def test_the_report_has_every_metric_and_the_decision_is_recorded(
    loop_run: tuple[LoopOutcome, LoopSettings],
) -> None:
    outcome, settings = loop_run
    assert outcome.report is not None and outcome.report.sufficient_data
    assert {r.metric for r in outcome.report.results} == set(MetricName)
    assert outcome.report_png is not None and outcome.report_png.stat().st_size > 0
    assert outcome.decision is not None
    path = settings.root / "store" / "experiments" / "decisions" / "pagellm-vs-popularity.jsonl"
    (recorded,) = [json.loads(line) for line in path.read_text().splitlines()]
    assert recorded["decision"]["action"] == outcome.decision.decision.action
    assert recorded["decision"]["primary"]["metric"] == "ctr"


@pytest.mark.kafka
@alone
def test_nothing_the_loop_started_runs_after_it(
    loop_run: tuple[LoopOutcome, LoopSettings],
) -> None:
    import ray

    outcome, _ = loop_run
    assert len(outcome.started_pids) == 3  # an ingest worker, the derive worker, the server
    assert not [pid for pid in outcome.started_pids if process_alive(pid)]
    assert not ray.is_initialized()
    assert outcome.ray_session_dir and not processes_naming(Path(outcome.ray_session_dir).name)


@pytest.mark.kafka
def test_ctrl_c_stops_every_process_the_demo_started(kafka_bootstrap: str, tmp_path: Path) -> None:
    root = tmp_path / "run"
    env = loop_env(kafka_bootstrap) | {
        "PAGELLM_DEMO_ROOT": str(root),
        "PAGELLM_DEMO_LEARNER_SETTINGS": str(tiny_learner(tmp_path / "learner.json")),
        "PAGELLM_DEMO_PROMPT_LENGTH": "5",
        "PAGELLM_SIM_USERS": "60",
        "PAGELLM_SIM_CATEGORIES": "4",
        "PAGELLM_SIM_ITEMS_PER_CATEGORY": "10",
        "PAGELLM_SIM_HISTORY_MIN": "14",
        "PAGELLM_SIM_HISTORY_MAX": "22",
    }
    demo = subprocess.Popen(
        [sys.executable, "-m", "pagellm", "demo"],
        env=os.environ | env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # a process group of its own, as a terminal's job has
    )
    try:
        # The first version training while the server starts (its log opened): the workers,
        # Ray with a training job, and a server not yet up all run, each mid-way.
        wait_for(lambda: (root / "serve" / "server.log").exists(), 240, "the server started")
        started = descendants(demo.pid)
        assert len(started) >= 5  # the workers, the server, Ray's processes
        os.killpg(demo.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
        output = demo.communicate(timeout=120)[0].decode(errors="replace")
    finally:
        if demo.poll() is None:
            os.killpg(demo.pid, signal.SIGKILL)
    assert demo.returncode == 130, output[-3000:]
    assert "interrupted: everything the loop started is stopped" in output
    assert not [pid for pid in started if process_alive(pid)]
