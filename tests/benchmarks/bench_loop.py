"""``make bench-loop``: the main command's default run (``make demo``), timed by stage.

It runs ``deploy.closed_loop`` with its defaults (under ``var/bench-loop``) and then reads what
happened from the store and the registry:

* events: every event produced in the run (the bootstrap history, the simulated clicks and
  purchases, and the impressions serving wrote); lost_events: produced minus stored;
* retrains and promotions: those started while traffic flowed (the first version excluded);
* event_to_model_s: for each simulated click and purchase, from its production to the first
  impression of the first version whose snapshot holds it (its offset at or below the snapshot's
  stream position in its partition): the platform's learning latency. Events produced after the
  last retrain's snapshot never reach a model within the run; they are counted
  (events_not_in_a_model) and left out of the median;
* the PageLLM variant against the popularity variant, served side by side in the same run (the
  reference): GMV per user and CTR lifts with their fixed and always-valid p;
* expected_clicks_first_page: what each registered version's first page (and, for one serving
  PPO's policy, its fine-tuned reference's) is worth by the simulated users' ground truth,
  beside the best page by true utility (``deploy.page_value``): where a lift was lost, without
  the A/B noise. Not a target.

Targets: total_s <= 600; lost_events == 0; retrains >= 1; event_to_model_s_p50 <= 300; CTR lift
positive with p < 0.05. The last line printed is the JSON summary.
"""

from __future__ import annotations

import json
import logging
import statistics
import sys
from datetime import UTC, datetime
from pathlib import Path

from rich.console import Console

from abtest.metrics import MetricName
from deploy.closed_loop import ClosedLoop, LoopOutcome, LoopSettings
from deploy.demo import logging_to
from deploy.page_value import version_page_values
from deploy.simulated_users import SimulatorSettings, build_population
from learner.registry import ModelRegistry
from streams.store.store_views import connect_store

ROOT = Path("var/bench-loop")


def learning_latencies(outcome: LoopOutcome, store: Path) -> tuple[list[float], int]:
    """(seconds from production to a served model, per covered event; events not covered)."""
    con = connect_store(store)
    offsets = con.execute(
        "SELECT event_id, kafka_topic || '/' || kafka_partition, kafka_offset FROM events "
        "WHERE event_id LIKE 'sim-click-%' OR event_id LIKE 'sim-buy-%'"
    ).fetchall()
    first_served = dict(
        con.execute("SELECT model_version, min(ts) FROM impressions GROUP BY 1").fetchall()
    )
    registry = ModelRegistry.for_store(store)
    versions = sorted(
        (first_served[v.version].timestamp(), v.stream_position)
        for v in registry.versions()
        if v.kind == "pagellm" and v.version in first_served
    )
    latencies, uncovered = [], 0
    for event_id, partition, offset in offsets:
        produced = outcome.produced[event_id]
        served = next(
            (
                t
                for t, position in versions
                if t >= produced and offset <= position.get(partition, -1)
            ),
            None,
        )
        if served is None:
            uncovered += 1
        else:
            latencies.append(served - produced)
    return latencies, uncovered


def main() -> None:
    console = Console(stderr=True)
    settings, users = LoopSettings(root=ROOT), SimulatorSettings()
    logging.basicConfig(level=logging.INFO)
    with logging_to(ROOT / "logs" / "loop.log"):
        outcome = ClosedLoop(settings, users, console).run()
    store = ROOT / "store"
    con = connect_store(store)
    stored = dict(
        con.execute("SELECT type, count(DISTINCT event_id) FROM events GROUP BY 1").fetchall()
    )
    produced = outcome.bootstrap_events + len(outcome.produced) + outcome.pages_served
    during_traffic = outcome.retrains[1:]
    latencies, uncovered = learning_latencies(outcome, store)
    assert outcome.report is not None and outcome.decision is not None
    lift = {r.metric: r for r in outcome.report.results}
    gmv, ctr = lift[MetricName.GMV_PER_USER], lift[MetricName.CTR]
    figures = {
        "total_s": round(sum(outcome.stage_seconds.values()), 1),
        "stage_s": {k: round(v, 1) for k, v in outcome.stage_seconds.items()},
        "events": produced,
        "lost_events": produced - sum(stored.values()),
        "lost_feedback": len(outcome.produced) - outcome.stored_feedback,
        "lost_impressions": outcome.pages_served - stored.get("impression", 0),
        "failed_page_requests": outcome.failed_requests,
        "exhausted_page_requests": outcome.exhausted_requests,
        "retrains": sum(r.state == "registered" for r in during_traffic),
        "promotions": sum(bool(r.promoted) for r in during_traffic),
        "event_to_model_s_p50": round(statistics.median(latencies), 1) if latencies else None,
        "events_in_a_model": len(latencies),
        "events_not_in_a_model": uncovered,
        "gmv_lift": round(gmv.lift, 4),
        "gmv_p": gmv.p_value,
        "gmv_always_valid_p": gmv.always_valid_p,
        "ctr_lift": round(ctr.lift, 4),
        "ctr_p": ctr.p_value,
        "ctr_always_valid_p": ctr.always_valid_p,
        "users": outcome.report.users,
        "decision": outcome.decision.decision.action,
        "expected_clicks_first_page": version_page_values(
            store, build_population(users, datetime.now(UTC)), users.page_size
        ),
    }
    print(json.dumps(figures, default=str))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
