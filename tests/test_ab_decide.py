"""Promotion decided by the experiment: the rule against hand-made reports, and
``pagellm ab decide`` on real stores with a planted win, a planted loss and no effect."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb
import pytest

from abtest.analysis import Report
from abtest.comparison import MetricResult
from abtest.decision import decide, significantly
from abtest.decision_actions import decide_and_act
from abtest.metrics import MetricName
from abtest.registry import ExperimentRegistry
from abtest.synthetic_traffic import TrafficShape
from learner.registry import ModelRegistry
from streams.store.event_store import EventStore
from tests.serving_fixtures import publish_version
from tests.test_ab_cli import bulk_load
from tests.test_cli import pagellm

NOW = datetime(2026, 12, 1, tzinfo=UTC)


def result(metric: MetricName, lift: float, always_valid_p: float, role: str) -> MetricResult:
    return MetricResult(
        metric=metric, label=metric.value, role=role, variant="treatment", control_value=1.0,
        variant_value=1.0 + lift, difference=lift, lift=lift, lift_ci=(lift - 0.1, lift + 0.1),
        p_value=always_valid_p / 10, always_valid_p=always_valid_p,
        always_valid_p_this_look=always_valid_p, significant=True,
        better=None, cuped_variance_reduction=None,
    )  # fmt: skip


def report(*results: MetricResult, srm: bool = False, enough: bool = True) -> Report:
    return Report(
        experiment="e", control="control", window_start=NOW, window_end=NOW,
        users={"control": 500, "treatment": 500}, expected_share={"control": 0.5,
        "treatment": 0.5}, srm_p_value=1e-5 if srm else 0.5, srm_flagged=srm,
        ambiguous_users=0, unknown_variants={}, sufficient_data=enough, warnings=[],
        alpha=0.05, results=list(results),
    )  # fmt: skip


CTR, FAILURE = MetricName.CTR, MetricName.SESSION_FAILURE_RATE


def test_the_rule_reads_the_always_valid_p_in_the_metrics_good_direction() -> None:
    assert significantly(result(CTR, 0.1, 0.01, "primary"), 0.05) == "better"
    assert significantly(result(CTR, -0.1, 0.01, "primary"), 0.05) == "worse"
    assert significantly(result(FAILURE, -0.1, 0.01, "guardrail"), 0.05) == "better"
    assert significantly(result(FAILURE, 0.1, 0.01, "guardrail"), 0.05) == "worse"
    assert significantly(result(CTR, 0.5, 0.05, "primary"), 0.05) is None  # not below alpha


@pytest.mark.parametrize(
    ("results", "kw", "action", "why"),
    [
        ([result(CTR, 0.2, 0.001, "primary")], {}, "promote", "significantly better"),
        ([result(CTR, -0.2, 0.001, "primary")], {}, "rollback", "significantly worse"),
        ([result(CTR, 0.2, 0.2, "primary")], {}, "continue", "not significant"),
        (
            [result(CTR, 0.2, 0.001, "primary"), result(FAILURE, 0.3, 0.01, "guardrail")],
            {},
            "continue",
            "guardrails got worse: session_failure_rate +30.00%",
        ),
        ([result(CTR, 0.2, 0.001, "primary")], {"srm": True}, "continue", "sample ratio"),
        ([], {"enough": False}, "continue", "too few exposed users"),
    ],
)
def test_the_decision_rule(
    results: list[MetricResult], kw: dict[str, bool], action: str, why: str
) -> None:
    decision = decide(report(*results, **kw), "treatment", CTR)
    assert decision.action == action and why in decision.reason


def planted(store: Path, name: str, treatment: str, gmv_lift: float, users: int = 4000) -> None:
    """A running experiment (v-control against ``treatment``) with a planted GMV lift."""
    start = datetime.now(UTC) - timedelta(days=2)
    created = pagellm(
        "ab", "create", name, "--store", str(store), "--variant", "control:v1",
        "--variant", f"treatment:{treatment}", "--start", start.isoformat(),
        "--primary", "gmv_per_user", "--pre-period-days", "0", "--sequential-tau", "0.5",
    )  # fmt: skip
    assert created.returncode == 0, created.stderr.decode()
    bulk_load(store, name, users, shape=TrafficShape(gmv_lift=gmv_lift))


def versions(store: Path, n: int) -> ModelRegistry:
    registry = ModelRegistry.for_store(store)
    for seed in range(n):  # v1 production, then v2 ... as candidates
        publish_version(registry, ["u1"], ["i1", "i2"], ["c"], seed=seed, promote=seed == 0)
    return registry


def decisions(store: Path, name: str) -> list[dict[str, object]]:
    path = store / "experiments" / "decisions" / f"{name}.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_decide_promotes_a_clear_win_and_stops_the_experiment(store: EventStore) -> None:
    registry = versions(store.root, 2)
    planted(store.root, "win", "v2", gmv_lift=1.0)
    decided = pagellm("ab", "decide", "win", "--store", str(store.root))
    out = decided.stdout.decode()
    assert decided.returncode == 0, decided.stderr.decode() + out
    assert "PROMOTE" in out and "promoted v2 to production (was v1)" in out
    assert registry.state().production == "v2"
    assert registry.transitions()[-1].actor == "ab decide win"
    assert ExperimentRegistry(store.root).get("win").stopped_at is not None
    (record,) = decisions(store.root, "win")
    assert record["decision"]["action"] == "promote"  # type: ignore[index]
    assert record["decision"]["primary"]["always_valid_p"] < 0.05  # type: ignore[index]
    assert (record["production_before"], record["production_after"]) == ("v1", "v2")
    again = pagellm("ab", "decide", "win", "--store", str(store.root))
    assert again.returncode == 2 and "stopped at" in again.stderr.decode()


def test_decide_rolls_back_a_clear_loss_of_the_production_it_follows(store: EventStore) -> None:
    registry = versions(store.root, 3)
    registry.promote("v3", reason="a retrain passed its gates")  # production: v1 -> v3
    planted(store.root, "loss", "production", gmv_lift=-0.6)
    decided = pagellm("ab", "decide", "loss", "--store", str(store.root))
    out = decided.stdout.decode()
    assert decided.returncode == 0, decided.stderr.decode() + out
    assert "ROLLBACK" in out and "rolled production back from v3 to v1" in out
    assert registry.state().production == "v1"


def test_decide_without_an_effect_changes_nothing_and_says_it_goes_on(store: EventStore) -> None:
    registry = versions(store.root, 2)
    planted(store.root, "flat", "v2", gmv_lift=0.0)
    decided = pagellm("ab", "decide", "flat", "--store", str(store.root))
    assert decided.returncode == 5, decided.stderr.decode()
    assert "CONTINUE" in decided.stdout.decode()
    assert registry.state().production == "v1"
    assert ExperimentRegistry(store.root).get("flat").stopped_at is None
    assert decisions(store.root, "flat")[0]["taken"] == "nothing changed"


def test_decide_reports_under_the_configured_memory_cap(
    store: EventStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    versions(store.root, 2)
    planted(store.root, "capped", "v2", gmv_lift=0.0)
    # a cap no report fits in: the report must run under it, as `ab report`'s does
    monkeypatch.setenv("PAGELLM_AB_MEMORY_LIMIT", "1KB")
    with pytest.raises(duckdb.OutOfMemoryException):
        decide_and_act(store.root, "capped")
    monkeypatch.delenv("PAGELLM_AB_MEMORY_LIMIT")
    record, _, _ = decide_and_act(store.root, "capped")
    assert record.decision.action == "continue"
