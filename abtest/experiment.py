"""An experiment's configuration: who is in it, what each variant serves, what is measured.

The first variant is the control every other variant is compared with. Users enter through two
hashes (``bucketing``): the layer's hash picks the experiment within its layer (experiments of
one layer hold disjoint layer buckets, so they exclude each other; layers hash with different
salts, so they are orthogonal), and the experiment's salt picks the variant.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, model_validator

from abtest.bucketing import BUCKETS, empty_variants, initial_allocation, ranges_size
from abtest.metrics import MetricName
from abtest.multiple_testing import Correction
from schemas.events import Identifier

MAX_WEIGHT = 1e6  # a variant's relative weight; weights must also leave each variant a bucket
MAX_ALPHA = 0.5  # a two-sided significance level at or above it tests nothing

Range = tuple[Annotated[int, Field(ge=0, le=BUCKETS)], Annotated[int, Field(ge=0, le=BUCKETS)]]


class Variant(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    name: Identifier
    weight: float = Field(
        gt=0, le=MAX_WEIGHT, description="share of the experiment's users, relative"
    )
    model_version: Identifier = Field(description="the policy version this variant serves")


class Phase(BaseModel):
    """An allocation period: from ``start`` until the next phase, users split by ``weights``."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    start: AwareDatetime
    weights: dict[str, float]


@dataclass(frozen=True)
class PhaseWindow:
    index: int
    start: datetime
    end: datetime
    weights: dict[str, float]


class Experiment(BaseModel):
    """One A/B experiment; ``ExperimentRegistry.create`` fills in its layer buckets."""

    # An infinity was accepted, saved as null, and then no experiment of the store loaded.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    name: Identifier
    salt: str = Field("", description="hash salt of the variant assignment (default: the name)")
    layer: Identifier = Field("default", description="experiments of one layer exclude each other")
    traffic: float = Field(1.0, gt=0, le=1, description="share of the layer's users it takes")
    layer_ranges: tuple[Range, ...] = Field(
        (), description="the layer buckets it holds (assigned at creation)"
    )
    variants: tuple[Variant, ...] = Field(min_length=2, description="the first is the control")
    allocation: dict[str, tuple[Range, ...]] = Field(
        default_factory=dict, description="variant -> its buckets (default: by weight)"
    )
    start: AwareDatetime
    end: AwareDatetime | None = Field(None, description="None: runs until stopped")
    pre_period_days: float = Field(
        14.0,
        ge=0,
        le=3650,
        description="days before start whose data adjusts the metrics (CUPED); 0: off",
    )
    primary_metrics: tuple[MetricName, ...] = (MetricName.GMV_PER_USER, MetricName.CTR)
    guardrails: tuple[MetricName, ...] = (MetricName.SESSION_FAILURE_RATE,)
    alpha: float = Field(0.05, gt=0, lt=MAX_ALPHA, description="significance level (two-sided)")
    min_users_per_variant: int = Field(
        100, ge=2, description="below this many exposed users a variant's results are withheld"
    )
    multiple_testing: Correction = Field(
        "none",
        description="adjust the fixed-horizon p of the family of metrics x treatment variants: "
        "'holm' (family-wise error) or 'bh' (false discovery rate, Benjamini-Hochberg)",
    )
    correct_primary: bool = Field(
        False,
        description="include the primary metrics in the family (default: they are the "
        "pre-registered hypotheses and keep their own p)",
    )
    sequential_tau: float = Field(
        0.02,
        gt=0,
        le=10,
        description="prior sd of the relative lift in the always-valid p-value (a lift of "
        "1,000% is 10)",
    )
    stopped_at: AwareDatetime | None = None
    phases: tuple[Phase, ...] = Field(
        (), description="allocation periods, oldest first; each reweight starts one"
    )

    @model_validator(mode="after")
    def _consistent(self) -> Experiment:
        names = [v.name for v in self.variants]
        if len(set(names)) != len(names):
            raise ValueError("variants: two variants share a name")
        if self.end is not None and self.end <= self.start:
            raise ValueError("end: must be after start")
        if not self.salt:
            object.__setattr__(self, "salt", self.name)
        if not self.allocation:
            weights = {v.name: v.weight for v in self.variants}
            object.__setattr__(self, "allocation", initial_allocation(weights))
        elif set(self.allocation) != set(names):
            raise ValueError("allocation: must name exactly the variants")
        elif sum(ranges_size(r) for r in self.allocation.values()) != BUCKETS:
            raise ValueError(f"allocation: the variants' ranges must cover all {BUCKETS} buckets")
        if empty := empty_variants(self.allocation):
            raise ValueError(
                f"variants: {', '.join(empty)} would get none of the {BUCKETS} buckets (a "
                "weight too small beside the others), so no user could ever see it"
            )
        if not self.phases:
            weights = {v.name: v.weight for v in self.variants}
            object.__setattr__(self, "phases", (Phase(start=self.start, weights=weights),))
        starts = [p.start for p in self.phases]
        if starts[0] != self.start or starts != sorted(set(starts)):
            raise ValueError("phases: the first starts with the experiment, each after the last")
        if any(set(p.weights) != set(names) for p in self.phases):
            raise ValueError("phases: each phase must weigh exactly the variants")
        return self

    @property
    def control(self) -> Variant:
        return self.variants[0]

    @property
    def pre_start(self) -> datetime:
        return self.start - timedelta(days=self.pre_period_days)

    def phase_windows(self, window_end: datetime) -> list[PhaseWindow]:
        """The phases that began before ``window_end``, each ending where the next begins."""
        # The first phase always, so that a window ending before the start selects nothing.
        starts = [self.start] + [p.start for p in self.phases[1:] if p.start < window_end]
        ends = [*starts[1:], window_end]
        return [
            PhaseWindow(i, start, end, self.phases[i].weights)
            for i, (start, end) in enumerate(zip(starts, ends, strict=True))
        ]

    def window_end(self, now: datetime | None = None) -> datetime:
        """Data counts until the earliest of its end, its stop and now."""
        return min(t for t in (self.end, self.stopped_at, now or datetime.now(UTC)) if t)

    @property
    def released_at(self) -> datetime | None:
        """When it gave its layer buckets back: its stop or its end (None: never, yet)."""
        return min((t for t in (self.stopped_at, self.end) if t), default=None)

    def holds_layer_buckets(self, now: datetime, cooldown: timedelta) -> bool:
        """Running, or released less than ``cooldown`` ago: its users still carry its effect."""
        released = self.released_at
        return released is None or now < released + cooldown

    def is_running(self, now: datetime | None = None) -> bool:
        """Not stopped and not past its end: it holds its layer buckets (also before start)."""
        now = now or datetime.now(UTC)
        return self.stopped_at is None and (self.end is None or now < self.end)
