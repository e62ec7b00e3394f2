"""One retrain, top to bottom: snapshot -> train -> gate -> publish -> promote.

1. Pin the event store as it is now (or a given snapshot) and derive its training data; a
   snapshot with nothing to learn, or the one production was trained on, ends the retrain
   here as skipped.
2. Warm start from the production version: its vocabulary grows by the snapshot's new users,
   items and categories (new embedding rows ~ N(0, var), old rows untouched) and its reference
   policy is fine-tuned on the new snapshot's golden lists (kept as it is if no epoch beats it
   on validation); the reward heads and PPO are trained again. PPO starts from the new
   reference, not from the parent's PPO policy: the KL penalty anchors on the reference, and
   PPO on top of PPO would drift further from it with every retrain. With no production
   version, or ``full``, every stage is trained from the start (meta pre-training too).
3. Score the candidate and production on the same held-out users of the snapshot, ranking the
   items both know, and apply the promotion gates (``learner.promotion_gates``).
4. Publish the candidate atomically; promote it if every gate passed, else it stays a candidate
   with the reason in its record.

Every step is timed into a ``RetrainRecord`` (``registry/retrains/<id>.json``), rewritten as the
retrain goes, so ``pagellm retrain status`` and DuckDB see a running retrain as well as the
finished ones. One retrain runs at a time (a lock beside the registry); a retrain that was
killed is marked interrupted by the next one, which also removes what it left half-written.
"""

from __future__ import annotations

import contextlib
import logging
import math
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from learner.artifacts import policy_directory
from learner.pipeline import StageRunner, train_all
from learner.promotion_gates import GateSettings, check_gates
from learner.registry import ModelRegistry
from learner.retrain_journal import RetrainJournal, read_retrains
from learner.settings import LearnerSettings, RetrainSettings
from learner.stages import labelled_pairs, prepare_run, validation_users
from learner.version_eval import (
    POLICY,
    REFERENCE,
    REWARD,
    VOCABULARY,
    VersionModels,
    load_version_models,
    relevance_figures,
    shared_items,
    shared_pairs,
    shared_test_users,
    version_figures,
)
from schemas.model_registry import GateResult, RetrainRecord, VersionRecord
from streams.derive.derived_state import DeriveConfig
from streams.derive.snapshot_store import pin_snapshot
from streams.derive.training_snapshot import TrainingSnapshot
from streams.store.atomic_files import write_atomically
from streams.store.event_store import EventStore
from streams.store.file_locks import LockBusy, exclusive

log = logging.getLogger(__name__)

RUNS = "runs"
RETRAIN_LOCK = "retrain.lock"


class RetrainBusy(RuntimeError):
    """Another retrain holds the lock."""


class RetrainFailed(RuntimeError):
    """A retrain stopped with an error; its record says where."""


@contextlib.contextmanager
def retrain_lock(registry: ModelRegistry) -> Iterator[None]:
    """Held for a whole retrain. On taking it, whatever a killed retrain left is cleaned up:
    its record is marked interrupted, its half-published version removed, and every run
    directory, which only a running retrain uses (one killed after recording its outcome left
    its own behind too)."""
    try:
        with exclusive(registry.root / RETRAIN_LOCK, busy="busy"):
            for record in read_retrains(registry):
                if record.state == "running":
                    log.warning("retrain %s was interrupted; cleaning up", record.retrain_id)
                    record.state, record.error = "interrupted", "the process stopped mid-retrain"
                    write_atomically(
                        registry.retrains_dir / f"{record.retrain_id}.json",
                        record.model_dump_json(indent=1),
                    )
            for leftover in (registry.root / RUNS).glob("*"):
                shutil.rmtree(leftover, ignore_errors=True)
            registry.remove_abandoned_staging()
            yield
    except LockBusy as exc:
        raise RetrainBusy(f"another retrain is running on {registry.root}") from exc


def gate_candidate(
    candidate: VersionModels,
    production: VersionModels | None,
    production_name: str | None,
    snapshot: TrainingSnapshot,
    learner: LearnerSettings,
    gates: GateSettings,
) -> tuple[dict[str, float], dict[str, float] | None, GateResult]:
    """(candidate's figures, production's, the gate result) on the same held-out users and
    reward-validation pairs of the snapshot."""
    vocabs = [candidate.vocab] + ([production.vocab] if production else [])
    users = shared_test_users(snapshot, vocabs)
    held_out = validation_users(snapshot, learner)
    pairs = shared_pairs([p for p in labelled_pairs(snapshot) if p.user in held_out], vocabs)
    k, seed, among = learner.ppo.page_length, learner.seed, shared_items(vocabs)
    ours = version_figures(candidate, snapshot, users, pairs, k, seed, among)
    theirs = None
    if production is not None:
        theirs = version_figures(production, snapshot, users, pairs, k, seed, among)
        everyone = shared_test_users(snapshot, [candidate.vocab])
        ours |= {
            f"all_{name}": value
            for name, value in relevance_figures(candidate, snapshot, everyone).items()
        }
        ours["all_users"] = float(len(everyone))
    return ours, theirs, check_gates(ours, theirs, gates, production_name, len(users))


def nothing_to_learn(snapshot: TrainingSnapshot, snapshot_id: str) -> str | None:
    """Why the snapshot cannot train a policy (no golden list or no pair), or None."""
    lists = sum(1 for g in snapshot.golden.values() if g.items)
    pairs = sum(len(p) for p in snapshot.pairs.values())
    if lists and pairs:
        return None
    return (
        f"nothing to train on: snapshot {snapshot_id} has {lists} golden lists and {pairs} "
        "preference pairs (users need at least 3 positives)"
    )


def no_progress(title: str) -> Callable[[int], None] | None:
    return None


@dataclass
class RetrainJob:
    """What a retrain is asked to do."""

    store_dir: Path
    learner: LearnerSettings
    settings: RetrainSettings
    runner: StageRunner
    trigger: str
    full: bool = False  # this once, every stage (``settings.full``: every retrain)
    snapshot_id: str | None = None  # None: the store as it is now
    derive: DeriveConfig = field(default_factory=DeriveConfig)
    on_stage: Callable[[str], Callable[[int], None] | None] = no_progress


def retrain(job: RetrainJob) -> RetrainRecord:
    """One retrain of the store's production version (see the module's docstring)."""
    registry = ModelRegistry.for_store(job.store_dir)
    with retrain_lock(registry):
        journal = RetrainJournal(registry, job.trigger)
        log.info("retrain %s (%s)", journal.record.retrain_id, job.trigger)
        run_dir = registry.root / RUNS / journal.record.retrain_id
        try:
            return _retrain(job, journal, registry, run_dir)
        except Exception as exc:
            journal.update(state="failed", finished_at=datetime.now(UTC), error=repr(exc))
            raise RetrainFailed(f"retrain {journal.record.retrain_id} failed: {exc}") from exc
        finally:  # a published version holds its own links to the files
            shutil.rmtree(run_dir, ignore_errors=True)


def _retrain(
    job: RetrainJob, journal: RetrainJournal, registry: ModelRegistry, run_dir: Path
) -> RetrainRecord:
    learner = job.learner
    with journal.stage("snapshot"):
        manifest, snapshot = pin_snapshot(EventStore(job.store_dir), job.snapshot_id, job.derive)
    parent = registry.state().production
    reason = nothing_to_learn(snapshot, manifest.snapshot_id)
    if reason is None and parent is not None and not job.full:
        trained_on = registry.record(parent).snapshot_id
        if trained_on == manifest.snapshot_id:  # the same data would give the same model
            reason = f"nothing new: production {parent} was trained on snapshot {trained_on}"
    if reason is not None:
        log.info("retrain skipped: %s", reason)
        journal.update(
            state="skipped",
            finished_at=datetime.now(UTC),
            parent=parent,
            snapshot_id=manifest.snapshot_id,
            gate_reason=reason,
        )
        return journal.record
    warm = parent is not None and not (job.full or job.settings.full)
    warm_from = registry.model_dir(parent) if warm else None
    journal.update(
        snapshot_id=manifest.snapshot_id,
        stream_position=manifest.stream_position,
        parent=parent,
        warm_start=warm_from is not None,
    )

    with journal.stage("warm_start" if warm_from else "prepare"):
        prepare_run(run_dir, snapshot, learner, warm_from)
    ablation = job.settings.ablation
    runner = journal.timed(job.runner)
    models = train_all(snapshot, learner, run_dir, [ablation], runner, job.on_stage, warm_from)

    with journal.stage("evaluate"):
        candidate = VersionModels(
            models.vocab, models.policies[ablation], models.reference, models.reward_model
        )
        production = load_version_models(registry.model_dir(parent)) if parent else None
        ours, theirs, gate = gate_candidate(
            candidate, production, parent, snapshot, learner, job.settings.gates
        )
    broken = [name for name, value in ours.items() if math.isnan(value)]

    with journal.stage("publish"):
        version = registry.publish(
            VersionRecord(
                version="",
                created_at=datetime.now(UTC),
                snapshot_id=manifest.snapshot_id,
                stream_position=manifest.stream_position,
                parent=parent,
                retrain_id=journal.record.retrain_id,
                warm_start=warm_from is not None,
                ablation=ablation,
                settings=learner.model_dump(mode="json"),
                metrics=ours | {f"production_{k}": v for k, v in (theirs or {}).items()},
                gate=gate,
                initial_status="failed" if broken else "candidate",
            ),
            {
                VOCABULARY: run_dir / "vocabulary",
                REFERENCE: run_dir / "reference",
                REWARD: run_dir / "reward",
                POLICY: run_dir / policy_directory(ablation),
            },
        )
    promoted = gate.passed and not broken
    if promoted:
        registry.promote(version.version, reason=gate.reason, actor="retrain")
    reason = f"figures are NaN: {', '.join(broken)}" if broken else gate.reason
    log.info(
        "registered %s (%s): %s", version.version, "production" if promoted else "candidate", reason
    )
    journal.update(
        state="registered",
        finished_at=datetime.now(UTC),
        version=version.version,
        promoted=promoted,
        gate_reason=reason,
        metrics=ours,
    )
    return journal.record
