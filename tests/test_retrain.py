"""Retrains from the event store, in process: a full first version, warm starts that serve new
users and items, a sabotaged candidate refused by the gates, nothing-new skipped, a killed
retrain recovered, and the registry commands over the result."""

from __future__ import annotations

import dataclasses
import json
import os
import random
import signal
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
import torch

from learner.constrained_decoding import generate_pages
from learner.loop_control import request_retrain
from learner.offline_eval import first_slot_scores
from learner.registry import ModelRegistry
from learner.retrain import (
    RUNS,
    RetrainFailed,
    RetrainJob,
    RetrainSettings,
    retrain,
    retrain_lock,
)
from learner.retrain_journal import read_retrains
from learner.retrain_loop import RetrainLoop
from learner.settings import LearnerSettings
from learner.stages import run_in_process
from learner.version_eval import load_version_models
from learner.vocabulary import item_token, user_token
from schemas import CatalogueItem, Rating
from streams.derive.derived_state import DeriveConfig
from streams.derive.snapshot_store import read_manifest
from streams.store.event_store import EventStore
from streams.store.ledger_schema import LedgerBatch, SourceRecord
from streams.store.store_views import connect_store
from tests.conftest import wait_for
from tests.test_cli import pagellm
from tests.test_offline_eval import TINY

torch.set_num_threads(1)
T0 = datetime(2026, 1, 1, tzinfo=UTC)
DERIVE = DeriveConfig(prompt_length=5)


def write_ratings(
    store: EventStore, users: range, items: range, offset: int, day: int = 0, seed: int = 7
) -> int:
    """Users rate 25 of ``items``: every third item is bad for everyone (1-2), the rest good
    (4-5) in the two of four categories a user likes, else 3. Returns the next offset."""
    rng = random.Random(seed + day)
    batch = LedgerBatch()
    for i in items:
        item = CatalogueItem(item_id=f"i{i}", category=f"c{i % 4}", price=Decimal(i))
        batch.add_catalogue_item(item, SourceRecord("catalogue", 0, offset, None, None))
        offset += 1
    for u in users:
        liked = {u % 4, (u + 1) % 4}
        for t, i in enumerate(rng.sample(list(items), 25)):
            rating = (
                rng.choice([1, 2]) if i % 3 == 0 else rng.choice([4, 5]) if i % 4 in liked else 3
            )
            event = Rating(
                type="rating",
                event_id=f"e{day}-{u}-{i}",
                user_id=f"u{u}",
                session_id="s",
                ts=T0 + timedelta(days=day, minutes=t),
                item_id=f"i{i}",
                rating=rating,
            )
            batch.add_accepted(event, SourceRecord("events", u % 4, offset, None, None))
            offset += 1
    store.write_batch(batch, "w")
    return offset


def tiny_flags(store: EventStore, tmp_path: Path, **learner: object) -> list[str]:
    """The command-line flags of a tiny in-process training on ``store``."""
    settings = tmp_path / "settings.json"
    settings.write_text(LearnerSettings.model_validate(TINY | learner).model_dump_json())
    return [
        "--store",
        str(store.root),
        "--settings",
        str(settings),
        "--prompt-length",
        "5",
        "--in-process",
    ]


def job(store: EventStore, **settings: object) -> RetrainJob:
    learner = LearnerSettings.model_validate(TINY | {"validation_user_share": 0.3})
    # Few users: families of 10-15 validation pairs are compared, so one pair moves them by
    # 0.07-0.09 (the gate's noise allowance covers that), and relevance on 40 users moves by
    # several percent between honest versions.
    gates = {"min_pairs": 10, "relevance_tolerance": 0.2}
    return RetrainJob(
        store.root,
        learner,
        RetrainSettings(gates=gates, **settings),
        run_in_process,
        "test",
        derive=DERIVE,
    )


def test_warm_retrains_fine_tune_the_reference_and_serve_new_users_and_items(
    store: EventStore,
) -> None:
    offset = write_ratings(store, range(40), range(60), 0)
    first = retrain(job(store))
    assert first.state == "registered" and first.promoted and first.version == "v1"
    assert [s.stage for s in first.stages] == [
        "snapshot",
        "prepare",
        "meta",
        "finetune",
        "reward",
        "ppo_both",
        "evaluate",
        "publish",
    ]
    registry = ModelRegistry.for_store(store.root)
    v1 = registry.record("v1")
    assert v1.parent is None and not v1.warm_start and v1.gate and v1.gate.passed
    assert read_manifest(store, v1.snapshot_id).stream_position == v1.stream_position

    # New users u40-u49, who rate new items i60-i69 as well as old ones.
    write_ratings(store, range(40, 50), range(30, 70), offset, day=1)
    second = retrain(job(store))
    assert [s.stage for s in second.stages] == [
        "snapshot",
        "warm_start",
        "finetune",
        "reward",
        "ppo_both",
        "evaluate",
        "publish",
    ]
    v2 = registry.record(second.version or "")
    assert v2.parent == "v1" and v2.warm_start and v2.snapshot_id != v1.snapshot_id
    assert v2.stream_position["events/0"] > v1.stream_position["events/0"]
    assert registry.state().production == "v2", second.gate_reason

    old, new = (load_version_models(registry.model_dir(v)) for v in ("v1", "v2"))
    newcomer, new_item = "u41", "i65"
    with pytest.raises(KeyError):
        old.vocab.encode([user_token(newcomer)])
    # The vocabulary grew around the parent's: every old token keeps its id, so the parent's
    # rows were where the candidate's fine-tuning started.
    old_tokens = old.vocab.tokenizer.get_vocab()
    assert {t: new.vocab.token_id(t) for t in old_tokens} == old_tokens
    # ... and serves the newcomer: a page of catalogue items, and the new item has a score.
    history = ["i60", "i61", "i30"]
    page = generate_pages(new.policy, new.vocab, [(newcomer, history)], k=5, greedy=True).pages[0]
    assert len(set(page)) == 5 and not set(page) & set(history)
    scores = first_slot_scores(new.policy, new.vocab, [(newcomer, history)])
    assert torch.isfinite(scores[0, new.vocab.item_index[new_item]])
    assert new.vocab.token_id(item_token(new_item)) >= old.vocab.size

    # The store has not moved: a retrain would learn nothing, so it is skipped.
    third = retrain(job(store))
    assert third.state == "skipped" and "nothing new" in (third.gate_reason or "")
    assert [v.version for v in registry.versions()] == ["v1", "v2"]


def test_a_loop_set_to_retrain_fully_fine_tunes_every_version_afresh(store: EventStore) -> None:
    # PAGELLM_RETRAIN_FULL (RetrainSettings.full) was read and ignored: only the CLI's --full
    # reached a retrain, so a loop configured for full retrains warm-started anyway.
    offset = write_ratings(store, range(40), range(60), 0)
    assert retrain(job(store, full=True, ablation="sft")).version == "v1"
    write_ratings(store, range(40, 50), range(30, 70), offset, day=1)
    second = retrain(job(store, full=True, ablation="sft"))
    assert [s.stage for s in second.stages][:4] == ["snapshot", "prepare", "meta", "finetune"]
    v2 = ModelRegistry.for_store(store.root).record(second.version or "")
    assert v2.parent == "v1" and not v2.warm_start


def test_a_candidate_trained_on_reversed_pairs_is_refused_with_the_reason(
    store: EventStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    offset = write_ratings(store, range(40), range(60), 0)
    retrain(job(store))
    write_ratings(store, range(40, 50), range(30, 70), offset, day=1)

    import learner.stages

    labelled = learner.stages.labelled_pairs

    def reversed_pairs(snapshot):  # type: ignore[no-untyped-def]
        return [
            p.__class__(p.user, p.history, p.family, p.rejected, p.chosen)
            for p in labelled(snapshot)
        ]

    # Only training sees the reversed pairs; the gate scores the snapshot's true ones. The
    # honest retrain on the same data is promoted (the test above).
    monkeypatch.setattr(learner.stages, "labelled_pairs", reversed_pairs)
    worse = retrain(job(store))
    assert worse.state == "registered" and not worse.promoted
    assert "pair_accuracy_np" in (worse.gate_reason or ""), worse.gate_reason
    registry = ModelRegistry.for_store(store.root)
    assert registry.state().production == "v1"
    assert registry.state().status["v2"] == "candidate"
    gate = registry.record("v2").gate
    assert gate is not None and not gate.passed and gate.compared_with == "v1"
    refused = [c.name for c in gate.checks if not c.passed]
    assert "pair_accuracy_np" in refused

    # The registry commands show it; promotion needs --force; rollback is instant.
    show = pagellm("registry", "show", "candidate", "--store", str(store.root), "--json")
    assert show.returncode == 0, show.stderr.decode()
    doc = json.loads(show.stdout)
    assert doc["status"] == "candidate" and doc["parent"] == "v1" and not doc["gate"]["passed"]
    refuse = pagellm("registry", "promote", "v2", "--reason", "try", "--store", str(store.root))
    assert refuse.returncode == 2 and b"did not pass its gates (pair_accuracy_np" in refuse.stderr
    forced = pagellm(
        "registry", "promote", "v2", "--reason", "by hand", "--force", "--store", str(store.root)
    )
    assert forced.returncode == 0 and registry.state().production == "v2"
    back = pagellm("registry", "rollback", "--reason", "it was worse", "--store", str(store.root))
    assert back.returncode == 0, back.stderr.decode()
    assert registry.state().production == "v1" and registry.state().status["v2"] == "retired"
    listing = pagellm("registry", "list", "--json", "--store", str(store.root))
    rows = [json.loads(line) for line in listing.stdout.splitlines()]
    assert [(r["version"], r["status"]) for r in rows] == [("v1", "production"), ("v2", "retired")]
    sql = pagellm(
        "registry",
        "sql",
        "--json",
        "--store",
        str(store.root),
        "SELECT action, version, reason FROM model_transitions ORDER BY seq",
    )
    actions = [json.loads(line) for line in sql.stdout.splitlines()]
    assert [a["action"] for a in actions] == ["promote", "promote", "rollback"]
    assert actions[-1] == {"action": "rollback", "version": "v1", "reason": "it was worse"}


@pytest.mark.parametrize("after", ["ppo_both", "evaluate"])  # killed evaluating, publishing
def test_a_retrain_killed_around_publishing_leaves_whole_versions_and_the_loop_recovers(
    store: EventStore, tmp_path: Path, after: str
) -> None:
    write_ratings(store, range(40), range(60), 0)
    registry = ModelRegistry.for_store(store.root)
    command = ["retrain", "now", *tiny_flags(store, tmp_path, validation_user_share=0.3)]
    proc = subprocess.Popen(
        [sys.executable, "-m", "pagellm", *command],
        cwd=Path(__file__).parent.parent,
        stderr=subprocess.DEVNULL,
    )

    def reached() -> bool:  # the record is rewritten as each step ends
        records = read_retrains(registry)
        return bool(records) and any(s.stage == after for s in records[0].stages)

    try:
        wait_for(reached, 120, f"the end of step {after}", interval_s=0.002)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    killed = read_retrains(registry)[0]
    # The kill lands within milliseconds of the step's end: almost always before the retrain
    # has recorded its outcome; if the retrain won the race, there is nothing to interrupt.
    assert killed.state in ("running", "registered")
    for v in registry.versions():  # whatever the kill interrupted, a listed version is whole
        assert load_version_models(registry.model_dir(v.version)).vocab.size > 0

    settings_now = RetrainSettings(interval_s=0, min_new_pairs=0, poll_s=0.05)
    loop = RetrainLoop(
        store.root, settings_now, lambda trigger: dataclasses.replace(job(store), trigger=trigger)
    )
    request_retrain(registry, "test")
    after = loop.run_once()
    assert after is not None and after.state in ("registered", "skipped"), after
    states = {r.retrain_id: r.state for r in read_retrains(registry)}
    assert states[killed.retrain_id] == (
        "interrupted" if killed.state == "running" else "registered"
    )
    assert [p.name for p in (registry.root / "runs").iterdir()] == []
    assert not list((registry.root / "versions").glob(".staging-*"))
    production = registry.state().production
    assert production is not None and load_version_models(registry.model_dir(production))
    status = pagellm("retrain", "status", "--json", "--store", str(store.root))
    doc = json.loads(status.stdout)
    assert doc["retrains"][0]["state"] == states[killed.retrain_id]


def test_nothing_to_learn_is_skipped_and_a_bad_snapshot_refused(store: EventStore) -> None:
    write_ratings(store, range(3), range(0, 90, 3), 0)  # only items everyone rates 1-2
    empty = retrain(job(store))
    assert empty.state == "skipped" and empty.version is None
    assert "nothing to train on" in (empty.gate_reason or ""), empty.gate_reason
    bad = pagellm("retrain", "now", "--snapshot", "nope", "--store", str(store.root))
    assert bad.returncode == 2 and b"--snapshot: no snapshot 'nope'" in bad.stderr


def test_train_from_a_snapshot_writes_a_run_and_its_figures(
    store: EventStore, tmp_path: Path
) -> None:
    write_ratings(store, range(40), range(60), 0)
    out = tmp_path / "train"
    common = (*tiny_flags(store, tmp_path), "--out", str(out))
    trained = pagellm("train", "--snapshot", "latest", *common)
    assert trained.returncode == 0, trained.stderr.decode()[-2000:]
    figures = json.loads((out / "metrics.json").read_text())
    assert figures["users"] == 40 and 0 < figures["ndcg@100"] <= 1
    (stored,) = connect_store(store.root).execute("SELECT count(*) FROM ingested").fetchone()
    assert read_manifest(store, figures["snapshot_id"]).rows == stored  # the whole store
    for stage in ("meta", "reference", "reward", "policy_both"):
        assert (out / "run" / stage).is_dir()
    unknown = pagellm("train", "--snapshot", "latest", "--warm-from", "v9", *common)
    assert unknown.returncode == 2 and b"version: no 'v9'" in unknown.stderr


def test_a_failed_retrain_is_recorded_with_its_error(store: EventStore, tmp_path: Path) -> None:
    write_ratings(store, range(40), range(60), 0)
    missing = tmp_path / "no-such-model"
    learner = LearnerSettings.model_validate(TINY | {"pretrained_dir": str(missing)})
    with pytest.raises(RetrainFailed, match=r"retrain \S+ failed"):
        retrain(dataclasses.replace(job(store), learner=learner))
    registry = ModelRegistry.for_store(store.root)
    (failed,) = read_retrains(registry)
    assert failed.state == "failed" and "no-such-model" in (failed.error or "")
    assert registry.versions() == [] and not list((registry.root / "runs").iterdir())


def test_taking_the_retrain_lock_removes_every_run_directory_left_behind(store: EventStore) -> None:
    # A retrain killed after recording "registered" but before removing its run directory left
    # it there for good: only the directories of "running" records were removed.
    registry = ModelRegistry.for_store(store.root)
    left = registry.root / RUNS / "20261202T081048-4d4b2d" / "meta"
    left.mkdir(parents=True)
    (left / "weights.bin").write_bytes(b"x")
    with retrain_lock(registry):
        assert list((registry.root / RUNS).iterdir()) == []
