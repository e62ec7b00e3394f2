"""The closed loop, shortened: a real broker, real worker processes, a real local Ray with Ray
Serve, simulated users over HTTP, a retrain while traffic flows, the report and the decision;
and afterwards nothing it started is left running."""

from __future__ import annotations

import io
import json
import uuid
from pathlib import Path

import pytest
from rich.console import Console

from abtest.metrics import MetricName
from deploy.closed_loop import ClosedLoop, LoopOutcome, LoopSettings
from deploy.simulated_users import SimulatorSettings
from learner.registry import ModelRegistry
from learner.settings import LearnerSettings
from streams.store_views import connect_store
from streams.worker_process import process_alive
from tests.test_offline_eval import TINY

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


@pytest.fixture(scope="module")
def loop_run(
    kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory
) -> tuple[LoopOutcome, LoopSettings]:
    root = tmp_path_factory.mktemp("loop")
    name = uuid.uuid4().hex[:10]
    env = {
        "PAGELLM_KAFKA_BOOTSTRAP": kafka_bootstrap,
        "PAGELLM_EVENTS_TOPIC": f"loop-{name}",
        "PAGELLM_DEAD_LETTER_TOPIC": f"loop-{name}.dlq",
        "PAGELLM_CATALOGUE_TOPIC": f"loop-catalogue-{name}",
        "PAGELLM_CONSUMER_GROUP": f"loop-{name}",
        "PAGELLM_BATCH_MAX_WAIT_S": "0.2",
    }
    learner = root / "learner.json"
    learner.write_text(LearnerSettings.model_validate(TINY).model_dump_json())
    settings = LoopSettings(
        root=root / "run",
        budget_s=130,
        finish_reserve_s=15,
        retrain_every_s=15,
        learner_settings=learner,
        prompt_length=5,
        min_users_per_variant=30,
    )
    with pytest.MonkeyPatch.context() as patch:
        for variable, value in env.items():
            patch.setenv(variable, value)
        outcome = ClosedLoop(settings, USERS, Console(file=io.StringIO())).run()
    return outcome, settings


@pytest.mark.kafka
def test_feedback_flows_through_kafka_into_the_store_and_nothing_is_lost(
    loop_run: tuple[LoopOutcome, LoopSettings],
) -> None:
    outcome, settings = loop_run
    con = connect_store(settings.root / "store")
    counts = dict(con.execute("SELECT type, count(*) FROM events GROUP BY 1").fetchall())
    assert counts["rating"] == outcome.bootstrap_events > 0
    assert counts["impression"] > 0 and counts["click"] > 0
    assert len(outcome.produced) == outcome.stored_feedback  # every click and purchase
    served = con.execute(
        "SELECT count(DISTINCT user_id), count(DISTINCT variant) FROM impressions "
        "WHERE experiment = 'pagellm-vs-popularity'"
    ).fetchone()
    assert served[0] > 50 and served[1] == 2  # type: ignore[index]


@pytest.mark.kafka
def test_a_trained_version_is_served_and_a_retrain_registers_another(
    loop_run: tuple[LoopOutcome, LoopSettings],
) -> None:
    outcome, settings = loop_run
    first, *later = outcome.retrains
    assert first.state == "registered" and first.promoted and first.version == "v1"
    assert any(r.state == "registered" and r.version for r in later), later
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
def test_nothing_the_loop_started_runs_after_it(
    loop_run: tuple[LoopOutcome, LoopSettings],
) -> None:
    import ray

    outcome, _ = loop_run
    assert len(outcome.started_pids) == 3  # an ingest worker, the derive worker, the server
    assert not [pid for pid in outcome.started_pids if process_alive(pid)]
    assert not ray.is_initialized()
    assert outcome.ray_session_dir and not processes_naming(Path(outcome.ray_session_dir).name)
