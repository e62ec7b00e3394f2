"""What the model registry holds: versions with their lineage, their status changes, the gates
they passed or failed, and the retrains that produced them. The learner writes these; serving
and the A/B layer read them."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

Status = Literal["candidate", "production", "retired", "failed"]
STATUSES: tuple[Status, ...] = ("candidate", "production", "retired", "failed")
Action = Literal["promote", "rollback", "retire", "fail"]
# What a version's model/ holds: the learned policy's artifacts, or a popularity ranking.
VersionKind = Literal["pagellm", "popularity"]


class GateCheck(BaseModel):
    """One comparison of a candidate against production (or against a bound)."""

    model_config = ConfigDict(frozen=True)

    name: str
    candidate: float | None
    reference: float | None = Field(description="production's figure, or the bound")
    threshold: float | None = Field(description="the lowest (or highest) value that passes")
    passed: bool
    detail: str = ""


class GateResult(BaseModel):
    model_config = ConfigDict(frozen=True)

    passed: bool
    checks: tuple[GateCheck, ...]
    compared_with: str | None = Field(description="the production version, if there was one")
    held_out_users: int = Field(description="users both versions were scored on")

    @property
    def reason(self) -> str:
        failed = [c for c in self.checks if not c.passed]
        if failed:
            return "; ".join(c.detail or c.name for c in failed)
        against = self.compared_with or "no production version"
        notes = "; ".join(c.detail for c in self.checks if c.detail)
        return f"every gate passed against {against}" + (f" ({notes})" if notes else "")


class VersionRecord(BaseModel):
    """A registered version, as published (it never changes after)."""

    model_config = ConfigDict(frozen=True)

    version: str
    kind: VersionKind = "pagellm"
    created_at: datetime
    snapshot_id: str
    stream_position: dict[str, int] = Field(description="highest offset per topic/partition")
    parent: str | None = Field(description="the production version it was warm-started from")
    retrain_id: str | None = None
    warm_start: bool
    ablation: str = "both"
    settings: dict[str, object]
    metrics: dict[str, float] = Field(description="the version's figures on its snapshot")
    gate: GateResult | None = None
    initial_status: Status = "candidate"


class Transition(BaseModel):
    """One change of status, append-only; ``changes`` are every version it moved."""

    model_config = ConfigDict(frozen=True)

    seq: int
    at: datetime
    action: Action
    version: str
    changes: dict[str, Status]
    production: str | None = Field(description="the production version after this change")
    reason: str
    actor: str


RetrainState = Literal["running", "registered", "skipped", "failed", "interrupted"]


class StageTiming(BaseModel):
    stage: str
    seconds: float


class RetrainRecord(BaseModel):
    """One retrain, from its snapshot to its version: what ran, how long, what came out."""

    retrain_id: str
    trigger: str
    state: RetrainState
    started_at: datetime
    finished_at: datetime | None = None
    snapshot_id: str | None = None
    stream_position: dict[str, int] = Field(default_factory=dict)
    parent: str | None = None
    warm_start: bool = False
    stages: list[StageTiming] = Field(default_factory=list)
    version: str | None = None
    promoted: bool = False
    gate_reason: str | None = None
    metrics: dict[str, float] = Field(default_factory=dict)
    error: str | None = None
