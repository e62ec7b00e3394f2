"""Experiments kept as JSON files beside the event store, one per experiment.

Each file is written whole under a temporary name and renamed into place, so a reader sees the
old configuration or the new one, never half of either. Changes that read other experiments
(layer buckets) hold an exclusive lock on the directory, so two creations cannot take the same
buckets.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path

from pydantic import TypeAdapter, ValidationError

from abtest.bucketing import BUCKETS, Ranges, as_ranges, bucket_counts, expand, reallocate
from abtest.experiment import Experiment, Phase
from abtest.settings import AbSettings
from schemas.events import Identifier, describe_validation_error
from streams.store.atomic_files import write_atomically
from streams.store.file_locks import exclusive

EXPERIMENT_NAME: TypeAdapter[str] = TypeAdapter(Identifier)


class ExperimentError(ValueError):
    """A request the registry refuses; the message says why."""


def free_layer_buckets(taken: list[Ranges]) -> list[int]:
    """Layer buckets none of ``taken`` holds, in increasing order."""
    held = {b for ranges in taken for b in expand(ranges)}
    return [b for b in range(BUCKETS) if b not in held]


class ExperimentRegistry:
    """The store's experiments; a stopped one's layer buckets rest for ``bucket_cooldown``."""

    def __init__(self, store_dir: Path | str, bucket_cooldown: timedelta | None = None) -> None:
        self.dir = Path(store_dir) / "experiments"
        if bucket_cooldown is None:
            bucket_cooldown = timedelta(days=AbSettings().bucket_cooldown_days)
        self.bucket_cooldown = bucket_cooldown

    def _path(self, name: str) -> Path:
        # A name is a file name here: '../x' read STORE/x.json, outside the experiments.
        try:
            EXPERIMENT_NAME.validate_python(name)
        except ValidationError:
            raise ExperimentError(
                f"name: {name!r} is not an experiment name (1-128 letters, digits and _ . : -, "
                "starting with a letter or digit)"
            ) from None
        return self.dir / f"{name}.json"

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        with exclusive(self.dir / ".lock"):
            yield

    def _write(self, experiment: Experiment) -> None:
        path = self._path(experiment.name)
        write_atomically(path, experiment.model_dump_json(indent=2))

    def list(self) -> list[Experiment]:
        if not self.dir.exists():
            return []
        return [self._load(p) for p in sorted(self.dir.glob("*.json"))]

    def get(self, name: str) -> Experiment:
        path = self._path(name)
        if not path.exists():
            known = ", ".join(e.name for e in self.list()) or "none"
            raise ExperimentError(f"no experiment named {name!r} (known: {known})")
        return self._load(path)

    @staticmethod
    def _load(path: Path) -> Experiment:
        """The experiment a file holds; an ExperimentError naming the file if it is invalid
        (edited by hand, say), where a bare validation error named only a setting."""
        try:
            return Experiment.model_validate_json(path.read_text())
        except ValidationError as exc:
            raise ExperimentError(
                f"{path}: not a valid experiment ({describe_validation_error(exc)}); fix or "
                "remove the file"
            ) from None

    def create(self, experiment: Experiment, now: datetime | None = None) -> Experiment:
        """Store a new experiment, giving it the lowest free buckets of its layer."""
        now = now or datetime.now(UTC)
        with self._locked():
            if self._path(experiment.name).exists():
                raise ExperimentError(f"name: an experiment named {experiment.name!r} exists")
            rivals = [
                e
                for e in self.list()
                if e.layer == experiment.layer and e.holds_layer_buckets(now, self.bucket_cooldown)
            ]
            free = free_layer_buckets([e.layer_ranges for e in rivals])
            need = bucket_counts({"in": experiment.traffic, "out": 1 - experiment.traffic})["in"]
            if need > len(free):
                holders = ", ".join(f"{e.name} ({e.traffic:.0%}{self._resting(e)})" for e in rivals)
                raise ExperimentError(
                    f"traffic: layer {experiment.layer!r} has {len(free) / BUCKETS:.1%} of its "
                    f"users free ({holders} hold the rest); lower traffic or use another layer"
                )
            created = experiment.model_copy(update={"layer_ranges": as_ranges(free[:need])})
            self._write(Experiment.model_validate(created.model_dump()))
            return created

    def _resting(self, experiment: Experiment) -> str:
        released = experiment.released_at
        if released is None:
            return ""
        return f", resting until {released + self.bucket_cooldown:%Y-%m-%d %H:%M} UTC"

    def stop(self, name: str, at: datetime | None = None) -> Experiment:
        """End the experiment now (its layer buckets are free again after the cooldown)."""
        with self._locked():
            experiment = self.get(name)
            if experiment.stopped_at is not None:
                raise ExperimentError(f"experiment {name!r} was stopped at {experiment.stopped_at}")
            stopped = experiment.model_copy(update={"stopped_at": at or datetime.now(UTC)})
            self._write(stopped)
            return stopped

    def reweight(
        self, name: str, weights: Mapping[str, float], now: datetime | None = None
    ) -> Experiment:
        """New variant weights from ``now`` on, a new phase; users move only into growing ones."""
        now = now or datetime.now(UTC)
        with self._locked():
            experiment = self.get(name)
            try:
                allocation = reallocate(experiment.allocation, weights)
            except ValueError as exc:
                raise ExperimentError(str(exc)) from None
            variants = tuple(
                v.model_copy(update={"weight": weights[v.name]}) for v in experiment.variants
            )
            phase = Phase(start=max(now, experiment.start), weights=dict(weights))
            # A reweight before the start, or twice at one instant, replaces that phase.
            phases = [p for p in experiment.phases if p.start < phase.start] + [phase]
            changed = Experiment.model_validate(
                experiment.model_dump()
                | {"variants": variants, "allocation": allocation, "phases": phases}
            )
            self._write(changed)
            return changed
