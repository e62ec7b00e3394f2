"""The retrain loop: when it fires, how triggers during a retrain coalesce, and the whole loop
on a real broker and a real local Ray: events produced to Kafka become a registered version."""

from __future__ import annotations

import dataclasses
import json
import signal
import subprocess
import sys
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from learner.loop_control import (
    LoopAlreadyRunning,
    loop_lock,
    loop_running,
    read_loop_state,
    request_retrain,
)
from learner.registry import ModelRegistry
from learner.retrain import retrain
from learner.retrain_journal import read_retrains
from learner.retrain_loop import RetrainLoop, due_trigger
from learner.settings import LearnerSettings, RetrainSettings
from schemas.model_registry import RetrainRecord
from streams.derive.derive_worker import DeriveWorker
from streams.ingest.producer import EventProducer
from streams.ingest.worker_process import settings_env
from streams.settings import StreamSettings
from streams.store.event_store import EventStore
from tests.conftest import wait_for
from tests.test_offline_eval import TINY
from tests.test_retrain import DERIVE, job, write_ratings

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


def last(minutes_ago: float) -> RetrainRecord:
    return RetrainRecord(
        retrain_id="r",
        trigger="t",
        state="registered",
        started_at=NOW - timedelta(minutes=minutes_ago),
    )


def test_status_and_refusals_run_without_loading_model_code(
    store: EventStore, tmp_path: Path
) -> None:
    # Loading torch and transformers takes 8-10 s of a call on this machine: `retrain status`
    # took that long (its settings lived beside the model code), and so did refusals of `train`
    # and `eval` that needed none of it.
    bad = tmp_path / "bad.csv"
    bad.write_text("user_id,item_id,rating,timestamp\nu1,i1,9,1700000000\n")
    on_store = ["--store", str(store.root)]
    calls = [
        ["retrain", "status", "--json", *on_store],
        ["status", "--json", "--bootstrap", "127.0.0.1:1", *on_store],
        ["train", "--snapshot", "latest", "--warm-from", "v9", *on_store],
        ["eval", "--data", str(bad), "--out", str(tmp_path / "out")],
    ]
    probe = (
        "import json, sys, pagellm\n"
        f"codes = [pagellm.main(call) for call in {calls!r}]\n"
        "loaded = sorted(m for m in ('torch', 'transformers', 'ray') if m in sys.modules)\n"
        "print(json.dumps([codes, loaded]))"
    )
    ran = subprocess.run([sys.executable, "-c", probe], capture_output=True, timeout=120)
    assert ran.returncode == 0, ran.stderr.decode()[-2000:]
    codes, loaded = json.loads(ran.stdout.decode().splitlines()[-1])
    assert codes == [0, 1, 2, 2], ran.stderr.decode()[-2000:]
    assert loaded == [], loaded
    assert b"version: no 'v9'" in ran.stderr and b"bad.csv:2: rating" in ran.stderr


def test_due_trigger_by_hand() -> None:
    every_hour = RetrainSettings(interval_s=3600, min_new_pairs=100)
    assert due_trigger(NOW, None, False, None, every_hour) == "first retrain of this store"
    assert due_trigger(NOW, last(59), True, 0, every_hour) == "requested"
    assert due_trigger(NOW, last(59), False, 99, every_hour) is None
    assert due_trigger(NOW, last(59), False, None, every_hour) is None
    assert due_trigger(NOW, last(59), False, 100, every_hour) == (
        "new pairs: 100 since the last retrain (at least 100)"
    )
    assert due_trigger(NOW, last(60), False, 0, every_hour) == (
        "interval: 3600 s since the last retrain (every 3600 s)"
    )
    never = RetrainSettings(interval_s=0, min_new_pairs=0)
    assert due_trigger(NOW, last(10**6), False, 10**6, never) is None


def test_triggers_during_a_retrain_coalesce_into_one(store: EventStore) -> None:
    offset = write_ratings(store, range(40), range(60), 0)
    retrain(job(store))  # v1
    write_ratings(store, range(40, 50), range(30, 70), offset, day=1)
    settings = RetrainSettings(interval_s=0, min_new_pairs=0, poll_s=0.05)
    registry = ModelRegistry.for_store(store.root)
    started = threading.Event()
    release = threading.Event()

    def slow_job(trigger: str):  # type: ignore[no-untyped-def]
        started.set()
        release.wait(30)  # the retrain is "running" while the test piles up requests
        return dataclasses.replace(job(store), trigger=trigger)

    loop = RetrainLoop(store.root, settings, slow_job)
    stop = threading.Event()
    thread = threading.Thread(target=loop.run, args=(stop,))
    request_retrain(registry, "test")
    thread.start()
    try:
        assert started.wait(30)
        assert loop_running(registry)
        with pytest.raises(LoopAlreadyRunning), loop_lock(registry):
            pass
        for _ in range(3):  # three more requests while it retrains
            request_retrain(registry, "test")
        release.set()
        wait_for(lambda: len(read_retrains(registry)) == 3, 60, "the coalesced retrain")
        checks = loop.checks
        wait_for(lambda: loop.checks >= checks + 3, 30, "three idle checks after it")
    finally:
        release.set()
        stop.set()
        thread.join(60)
    retrains = read_retrains(registry)
    assert [r.trigger for r in retrains] == ["test", "requested", "requested"]
    # The second retrain pinned the store after the requests came: the coalesced one that
    # follows finds nothing new and says so.
    assert [(r.state, r.version) for r in retrains] == [
        ("registered", "v1"),
        ("registered", "v2"),
        ("skipped", None),
    ]
    assert read_loop_state(registry)["state"] == "stopped"  # type: ignore[index]
    assert not loop_running(registry)


def produce_ratings(
    settings: StreamSettings, users: range, items: range, day: int
) -> tuple[int, int]:
    """The test_retrain ratings, as events and catalogue records through Kafka."""
    scratch = EventStore(settings.store_dir.parent / f"scratch-{day}")
    scratch.init()
    write_ratings(scratch, users, items, 0, day=day)
    from streams.derive.snapshot_store import read_stream

    events, catalogue, _ = read_stream(scratch, tuple(scratch.ledger_files()))
    with EventProducer(settings.kafka_bootstrap, settings.catalogue_topic) as producer:
        for item in catalogue.values():
            producer.send_raw(item.item_id.encode(), item.model_dump_json().encode())
    with EventProducer(settings.kafka_bootstrap, settings.events_topic) as producer:
        producer.send_all(events)
    return len(events), len(catalogue)


def stored_events(store: EventStore) -> int:
    from streams.store.store_views import connect_store

    with connect_store(store.root) as con:
        return int(con.execute("SELECT count(*) FROM ratings").fetchone()[0])  # type: ignore[index]


@pytest.mark.kafka
def test_events_in_kafka_become_a_version_through_the_loop_on_ray(
    settings: StreamSettings,
    workers,
    tmp_path: Path,  # type: ignore[no-untyped-def]
) -> None:
    store = EventStore(settings.store_dir)
    workers("w0")
    first, _ = produce_ratings(settings, range(40), range(60), day=0)
    wait_for(lambda: stored_events(store) >= first, 120, f"{first} ratings in the store")
    derive = DeriveWorker(store, DERIVE)
    derive.poll()
    bootstrap = retrain(job(store))  # v1, in process: the loop's Ray path comes next
    assert bootstrap.version == "v1"

    learner = tmp_path / "learner.json"
    learner.write_text(
        LearnerSettings.model_validate(TINY | {"validation_user_share": 0.3}).model_dump_json()
    )
    env = settings_env(settings) | {
        "PAGELLM_RETRAIN_GATES__MIN_PAIRS": "10",
        "PAGELLM_RETRAIN_GATES__RELEVANCE_TOLERANCE": "0.2",
    }
    log = open(tmp_path / "loop.log", "wb")  # noqa: SIM115
    loop = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pagellm",
            "retrain",
            "serve-loop",
            "--settings",
            str(learner),
            "--prompt-length",
            "5",
            "--interval-s",
            "0",
            "--min-new-pairs",
            "10",
            "--poll-s",
            "0.5",
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=Path(__file__).parent.parent,
    )
    registry = ModelRegistry.for_store(store.root)
    try:
        wait_for(lambda: loop_running(registry), 60, "the loop to start")
        more, _ = produce_ratings(settings, range(40, 50), range(30, 70), day=1)
        wait_for(lambda: stored_events(store) >= first + more, 120, "the new ratings stored")
        derive.poll()  # the derive worker turns them into new pairs: the trigger
        wait_for(lambda: len(registry.versions()) == 2, 400, "the loop's version (Ray jobs)")
        # `retrain now` while the loop runs asks the loop, and waits for its answer.
        now = subprocess.run(
            [sys.executable, "-m", "pagellm", "retrain", "now", "--wait-s", "120"],
            env=env,
            capture_output=True,
            timeout=180,
            cwd=Path(__file__).parent.parent,
        )
        assert now.returncode == 0, now.stderr.decode()[-2000:]
        assert b"retrain requested" in now.stderr and b"skipped: nothing new" in now.stderr
    finally:
        loop.send_signal(signal.SIGTERM)
        code = loop.wait(120)
        log.close()
    output = (tmp_path / "loop.log").read_text()
    assert code == 0, output[-3000:]
    assert "stages finetune, reward, ppo_both finished on Ray" in output

    v2 = registry.record("v2")
    record = next(r for r in read_retrains(registry) if r.version == "v2")
    assert record.trigger.startswith("new pairs:") and record.version == "v2"
    assert v2.parent == "v1" and v2.warm_start and v2.retrain_id == record.retrain_id
    assert v2.stream_position == record.stream_position
    partitions = [k for k in v2.stream_position if k.startswith(settings.events_topic)]
    assert sum(v2.stream_position[k] + 1 for k in partitions) == first + more
    status = json.loads(
        subprocess.run(
            [sys.executable, "-m", "pagellm", "retrain", "status", "--json"],
            env=env,
            capture_output=True,
            check=True,
            cwd=Path(__file__).parent.parent,
        ).stdout
    )
    assert status["loop"]["state"] == "stopped" and not status["loop"]["running"]
    assert [(r["state"], r["version"]) for r in status["retrains"]] == [
        ("registered", "v1"),
        ("registered", "v2"),
        ("skipped", None),
    ]
