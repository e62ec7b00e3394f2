"""Retrains' records on disk: ``registry/retrains/<id>.json``, one per retrain, rewritten as it
goes. ``pagellm status``, ``retrain status`` and the loop read them; kept apart from the
retrain itself (``learner.retrain``) so that reading them imports no model code.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from learner.registry import ModelRegistry
from schemas.model_registry import RetrainRecord, StageTiming
from streams.store.atomic_files import write_atomically

if TYPE_CHECKING:
    from learner.pipeline import StageRunner


def new_retrain_id() -> str:
    return f"{datetime.now(UTC):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:6]}"


class RetrainJournal:
    """The retrain's record, rewritten whole (by rename) after every step."""

    def __init__(self, registry: ModelRegistry, trigger: str) -> None:
        self.path_dir = registry.retrains_dir
        self.record = RetrainRecord(
            retrain_id=new_retrain_id(),
            trigger=trigger,
            state="running",
            started_at=datetime.now(UTC),
        )
        self.save()

    def save(self) -> None:
        self.path_dir.mkdir(parents=True, exist_ok=True)
        path = self.path_dir / f"{self.record.retrain_id}.json"
        write_atomically(path, self.record.model_dump_json(indent=1))

    def update(self, **fields: object) -> None:
        for name, value in fields.items():
            setattr(self.record, name, value)
        self.save()

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        start = time.monotonic()
        yield
        self.record.stages.append(StageTiming(stage=name, seconds=time.monotonic() - start))
        self.save()

    def timed(self, runner: StageRunner) -> StageRunner:
        """``runner``, with each training stage's seconds recorded."""

        def run(stages, run_dir, snapshot, settings, on_stage):  # type: ignore[no-untyped-def]
            seconds = runner(stages, run_dir, snapshot, settings, on_stage)
            self.record.stages += [StageTiming(stage=s, seconds=t) for s, t in seconds.items()]
            self.save()
            return seconds

        return run


def read_retrains(registry: ModelRegistry) -> list[RetrainRecord]:
    """Every retrain's record, oldest first."""
    if not registry.retrains_dir.exists():
        return []
    records = [
        RetrainRecord.model_validate_json(p.read_text())
        for p in registry.retrains_dir.glob("*.json")
    ]
    return sorted(records, key=lambda r: r.started_at)
