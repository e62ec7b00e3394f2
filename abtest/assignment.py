"""Which variant of which experiment a user sees: a pure function of the configuration and id."""

from __future__ import annotations

from abtest.bucketing import bucket, variant_of
from abtest.experiment import Experiment


def layer_salt(layer: str) -> str:
    """The salt of a layer's hash; 'layer:' keeps it apart from any experiment's salt."""
    return f"layer:{layer}"


def in_experiment(experiment: Experiment, user_id: str) -> bool:
    """Whether the user's layer bucket is one the experiment holds."""
    b = bucket(layer_salt(experiment.layer), user_id)
    return any(lo <= b < hi for lo, hi in experiment.layer_ranges)


def assign(experiment: Experiment, user_id: str) -> str | None:
    """The user's variant in ``experiment``, or None when the user is not in it."""
    if not in_experiment(experiment, user_id):
        return None
    return variant_of(experiment.allocation, bucket(experiment.salt, user_id))
