"""Acting on an experiment's verdict (``abtest.decision``): the model registry and the
experiment change, and the decision is recorded with the report's figures.

* promote: the treatment's version becomes production (a version the offline gates refused is
  promoted too: the experiment measured it on real users, which is the stronger evidence; the
  record says so), unless it already is; the experiment stops, so every user gets production;
* roll back: when the treatment's version is production, production goes back to the one
  before it; the experiment stops, so nobody gets the treatment any more;
* continue: nothing changes.

Every decision, "continue" included, is appended to ``STORE/experiments/decisions/NAME.jsonl``.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

from pydantic import BaseModel

from abtest.analysis import Report
from abtest.decision import Decision, decide
from abtest.metrics import MetricName
from abtest.registry import ExperimentError, ExperimentRegistry
from abtest.report import ReportFiles, build_report, write_report
from learner.registry import ALIASES, ModelRegistry

DECISIONS = "decisions"


class DecisionRecord(BaseModel):
    at: datetime
    decision: Decision
    treatment_version: str | None
    production_before: str | None
    production_after: str | None
    taken: str  # what changed, in words


def treatment_version(registry: ModelRegistry, named: str) -> str | None:
    """The version a variant serves now: the name, or what an alias points at."""
    return registry.state().alias(named) if named in ALIASES else named


def decide_and_act(
    store_dir: Path, name: str, metric: MetricName | None = None, now: datetime | None = None
) -> tuple[DecisionRecord, Report, ReportFiles]:
    """Report, decide, act, record; returns the record, the report and its files."""
    experiments = ExperimentRegistry(store_dir)
    experiment = experiments.get(name)
    if len(experiment.variants) != 2:
        raise ExperimentError(
            f"{name}: decide needs exactly one treatment; it has {len(experiment.variants) - 1}"
        )
    if experiment.stopped_at is not None:
        raise ExperimentError(f"{name}: stopped at {experiment.stopped_at:%Y-%m-%d %H:%M} UTC")
    treatment = experiment.variants[1]
    report = build_report(store_dir, name, now)
    files = write_report(report, store_dir / "experiments" / "reports")
    decision = decide(report, treatment.name, metric or experiment.primary_metrics[0])

    registry = ModelRegistry.for_store(store_dir)
    before = registry.state().production
    version = treatment_version(registry, treatment.model_version)
    taken = "nothing changed"
    if decision.action == "promote":
        if version is None:
            raise ExperimentError(f"{name}: {treatment.model_version} names no version now")
        if version == before:
            taken = f"{version} is production already"
        else:
            refused = registry.record(version).gate
            registry.promote(version, reason=decision.reason, actor=f"ab decide {name}", force=True)
            taken = f"promoted {version} to production (was {before})"
            if refused is not None and not refused.passed:
                taken += f"; its offline gates had refused it: {refused.reason}"
        experiments.stop(name)
        taken += "; experiment stopped: every user gets production"
    elif decision.action == "rollback":
        if version is not None and version == before:
            restored = registry.rollback(reason=decision.reason, actor=f"ab decide {name}")
            taken = f"rolled production back from {version} to {restored.version}"
        else:
            taken = f"{version} is not production: nothing to roll back in the registry"
        experiments.stop(name)
        taken += "; experiment stopped: nobody gets the treatment"
    record = DecisionRecord(
        at=datetime.now(UTC),
        decision=decision,
        treatment_version=version,
        production_before=before,
        production_after=registry.state().production,
        taken=taken,
    )
    log_path = store_dir / "experiments" / DECISIONS / f"{name}.jsonl"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("a") as out:
        out.write(json.dumps(record.model_dump(mode="json")) + "\n")
    return record, report, files
