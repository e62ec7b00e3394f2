"""An experimenter's workflow through the console script: create, run traffic, report."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from abtest.assignment import assign
from abtest.registry import ExperimentRegistry
from abtest.synthetic_traffic import TrafficShape, as_ledger_rows, synthetic_traffic
from streams.settings import StreamSettings
from streams.store.event_store import LEDGER_DIR, EventStore
from streams.store.store_views import connect_store
from tests.conftest import wait_for
from tests.test_cli import cluster_flags, pagellm

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def create(store: Path, name: str, *extra: str, ended: bool = True) -> tuple[int, str]:
    """An experiment of the last eight days, ended an hour ago (or running for a day more)."""
    start = (datetime.now(UTC) - timedelta(days=8)).isoformat()
    end = (datetime.now(UTC) + timedelta(hours=-1 if ended else 24)).isoformat()
    result = pagellm(
        "ab", "create", name, "--store", str(store), "--variant", "control:v1",
        "--variant", "treatment:v2", "--start", start, "--end", end, *extra,
    )  # fmt: skip
    return result.returncode, result.stderr.decode()


@pytest.mark.kafka
def test_create_simulate_ingest_and_report(
    settings: StreamSettings, workers: Callable, tmp_path: Path
) -> None:
    store = settings.store_dir
    code, err = create(store, "ranking")
    assert code == 0, err
    assert "created ranking: 100.0% of layer 'default'" in err
    listed = pagellm("ab", "list", "--store", str(store)).stdout.decode()
    assert "ranking" in listed and "ended" in listed  # its end is an hour ago
    shown = json.loads(pagellm("ab", "show", "ranking", "--store", str(store)).stdout)
    assert shown["layer_ranges"] == [[0, 10_000]]
    assigned = pagellm("ab", "assign", "ranking", "u1", "u2", "--store", str(store))
    experiment = ExperimentRegistry(store).get("ranking")
    assert assigned.stdout.decode().split() == ["u1", assign(experiment, "u1"),
                                                "u2", assign(experiment, "u2")]  # fmt: skip

    traffic = pagellm(
        "ab", "simulate", "ranking", "--users", "3000", "--gmv-lift", "0.5", "--store", str(store)
    )  # fmt: skip
    assert traffic.returncode == 0, traffic.stderr.decode()
    events = traffic.stdout.count(b"\n")
    sent = pagellm("produce", "-", *cluster_flags(settings), stdin=traffic.stdout)
    assert sent.returncode == 0, sent.stderr.decode()
    workers()
    wait_for(
        lambda: connect_store(store).execute("SELECT count(*) FROM events").fetchone()[0] == events,
        120,
        f"{events} events in the store",
    )

    out = tmp_path / "report"
    report = pagellm("ab", "report", "ranking", "--store", str(store), "--out", str(out))
    table = report.stdout.decode()
    assert report.returncode == 0, report.stderr.decode() + table
    assert "GMV per user" in table and "Session failure rate" in table
    saved = json.loads((out / "ranking.json").read_text())
    assert sum(saved["users"].values()) == 3000
    assert not saved["srm_flagged"]
    results = {r["metric"]: r for r in saved["results"]}
    gmv = results["gmv_per_user"]
    assert gmv["significant"] and gmv["better"]
    assert gmv["lift_ci"][0] < 0.5 < gmv["lift_ci"][1]
    assert results["ctr"]["p_value"] > 0.001  # nothing was planted on clicks
    assert (out / "ranking.png").read_bytes().startswith(PNG_MAGIC)

    # The user rollup, as its service builds it; the report then reads it, to the same figures.
    rolled = pagellm("ab", "rollup", "--store", str(store))
    assert rolled.returncode == 0, rolled.stderr.decode()
    assert "rollup of ranking: 3,000 exposed users" in rolled.stdout.decode()
    again = pagellm("ab", "report", "ranking", "--store", str(store), "--out", str(out))
    assert again.returncode == 0 and "(from the user rollup)" in again.stdout.decode()
    from_rollup = json.loads((out / "ranking.json").read_text())
    assert from_rollup["read_from"] == "rollup" and from_rollup["users"] == saved["users"]
    assert from_rollup["results"][0]["lift"] == pytest.approx(saved["results"][0]["lift"])


def bulk_load(
    store: Path,
    name: str,
    users: int,
    drop_treatment_share: float = 0.0,
    shape: TrafficShape | None = None,
) -> None:
    """Synthetic traffic written straight into the store, up to the experiment's end (a running
    one: a minute ago); some treatment users lost if asked."""
    experiment = ExperimentRegistry(store).get(name)
    end = experiment.end or datetime.now(UTC) - timedelta(minutes=1)
    for chunk in synthetic_traffic(experiment, users, shape=shape, window_end=end):
        if drop_treatment_share:
            every = round(1 / drop_treatment_share)
            keep = [
                assign(experiment, u) != "treatment" or int(u[1:]) % every != 0
                for u in chunk["user_id"].to_pylist()
            ]
            chunk = chunk.filter(keep)
        EventStore(store).write_table(LEDGER_DIR, as_ledger_rows(chunk, 0), "bulk")


def test_report_flags_a_sample_ratio_mismatch_loudly(store: EventStore, tmp_path: Path) -> None:
    assert create(store.root, "lossy")[0] == 0
    bulk_load(store.root, "lossy", users=20_000, drop_treatment_share=0.1)
    report = pagellm("ab", "report", "lossy", "--store", str(store.root), "--out", str(tmp_path))
    assert report.returncode == 3
    assert "SAMPLE RATIO MISMATCH" in report.stdout.decode()
    assert json.loads((tmp_path / "lossy.json").read_text())["srm_flagged"]


def test_report_with_too_little_data_says_so(store: EventStore, tmp_path: Path) -> None:
    assert create(store.root, "tiny")[0] == 0
    bulk_load(store.root, "tiny", users=60)
    report = pagellm("ab", "report", "tiny", "--store", str(store.root), "--out", str(tmp_path))
    assert report.returncode == 4
    assert "too little data" in report.stdout.decode()
    saved = json.loads((tmp_path / "tiny.json").read_text())
    assert saved["results"] == [] and not saved["sufficient_data"]
    assert not (tmp_path / "tiny.png").exists()


def test_cli_errors_name_the_field_and_the_reason(store: EventStore) -> None:
    assert create(store.root, "exp", ended=False)[0] == 0
    code, err = create(store.root, "exp")
    assert code == 2 and "an experiment named 'exp' exists" in err
    code, err = create(store.root, "other", "--traffic", "1.5")
    assert code == 2 and "invalid setting: traffic: Input should be less than or equal to 1" in err
    code, err = create(store.root, "third", "--layer", "default", "--traffic", "0.5")
    assert code == 2 and "traffic: layer 'default' has 0.0% of its users free" in err
    bad = pagellm("ab", "create", "x", "--store", str(store.root), "--variant", "control")
    assert bad.returncode == 2 and b"expected NAME:MODEL_VERSION[:WEIGHT]" in bad.stderr
    missing = pagellm("ab", "report", "nope", "--store", str(store.root))
    assert missing.returncode == 2 and b"no experiment named 'nope' (known: exp)" in missing.stderr
    stopped = pagellm("ab", "stop", "exp", "--store", str(store.root))
    assert stopped.returncode == 0
    again = pagellm("ab", "stop", "exp", "--store", str(store.root))
    assert again.returncode == 2 and b"was stopped at" in again.stderr
