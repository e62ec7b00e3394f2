"""Promotion gates: a candidate replaces production only if it does not regress.

Both versions are scored on the same held-out users of the candidate's snapshot
(``learner.version_eval``); each gate is a small comparison over those figures:

  relevance (NDCG@100, Recall@20): candidate >= production * (1 - tolerance)
  reward-head pair accuracy, per family: candidate >= production - max(tolerance, z * se), se
    the standard error of the two accuracies' difference over the family's n pairs, so that a
    drop of one pair in a dozen is not taken for a regression (a family with fewer than
    ``min_pairs`` validation pairs is reported, not compared)
  KL of the policy to its reference (nats per page): candidate <= bound

Without a production version only the bounds apply (the first version has nothing to regress
against).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from pydantic import BaseModel, Field

from schemas.model_registry import GateCheck, GateResult

RELEVANCE = ("ndcg@100", "recall@20")
PAIR_ACCURACY = "pair_accuracy_"
PAIRS_OF = "pairs_"
KL = "kl_to_reference"


class GateSettings(BaseModel):
    """How much worse than production a candidate may be, and how far from its reference."""

    relevance_tolerance: float = Field(
        0.05, ge=0, lt=1, description="relative drop of NDCG@100 and Recall@20 allowed"
    )
    pair_accuracy_tolerance: float = Field(
        0.05, ge=0, le=1, description="absolute drop of a family's pair accuracy allowed"
    )
    max_kl: float = Field(5.0, gt=0, description="KL to the reference, nats per page, at most")
    pair_accuracy_z: float = Field(
        1.645,
        ge=0,
        description="a family's drop must also exceed this many standard errors of the "
        "difference (one-sided 95%): on few pairs the tolerance is below their noise",
    )
    min_pairs: int = Field(
        30, ge=1, description="a family with fewer validation pairs is reported, not compared"
    )


def relative_floor(production: float, tolerance: float) -> float:
    """floor = production * (1 - tolerance)."""
    return production * (1 - tolerance)


def absolute_floor(production: float, tolerance: float) -> float:
    """floor = production - tolerance."""
    return production - tolerance


def accuracy_difference_se(candidate: float, production: float, pairs: int) -> float:
    """se = sqrt((p_c (1 - p_c) + p_p (1 - p_p)) / n), as if the accuracies were independent;
    on the same pairs they correlate, so this errs wide, towards passing."""
    variance = candidate * (1 - candidate) + production * (1 - production)
    return math.sqrt(max(variance, 0.0) / pairs)


def bounded(
    name: str, candidate: float, reference: float, threshold: float, floor: bool
) -> GateCheck:
    """Passes when candidate >= threshold (a floor) or candidate <= threshold (a ceiling); a
    NaN never passes. ``reference`` is production's figure, or the bound itself."""
    passed = not math.isnan(candidate) and (
        candidate >= threshold if floor else candidate <= threshold
    )
    if passed:
        detail = ""
    elif floor:
        detail = f"{name} {candidate:.4f} < {threshold:.4f} (production {reference:.4f})"
    else:
        detail = f"{name} {candidate:.4f} > bound {threshold:.4f}"
    return GateCheck(
        name=name,
        candidate=candidate,
        reference=reference,
        threshold=threshold,
        passed=passed,
        detail=detail,
    )


def too_few_pairs(name: str, candidate: float, production: float, pairs: int) -> GateCheck:
    """Not compared: a pair accuracy over so few pairs says little either way."""
    return GateCheck(
        name=name,
        candidate=candidate,
        reference=production,
        threshold=None,
        passed=True,
        detail=f"{name}: only {pairs} pairs, not compared",
    )


def check_gates(
    candidate: Mapping[str, float],
    production: Mapping[str, float] | None,
    settings: GateSettings,
    compared_with: str | None = None,
    held_out_users: int = 0,
) -> GateResult:
    """Every gate of ``candidate`` against ``production``'s figures on the same users."""
    checks = [bounded(KL, candidate[KL], settings.max_kl, settings.max_kl, floor=False)]
    if production is not None:
        for name in RELEVANCE:
            lowest = relative_floor(production[name], settings.relevance_tolerance)
            checks.append(bounded(name, candidate[name], production[name], lowest, floor=True))
        families = sorted(k for k in production if k.startswith(PAIR_ACCURACY))
        for name in families:
            if name not in candidate:
                continue  # a family the snapshot has no validation pairs of
            pairs = int(candidate.get(PAIRS_OF + name.removeprefix(PAIR_ACCURACY), 0))
            if pairs < settings.min_pairs:
                checks.append(too_few_pairs(name, candidate[name], production[name], pairs))
                continue
            noise = settings.pair_accuracy_z * accuracy_difference_se(
                candidate[name], production[name], pairs
            )
            allowed = max(settings.pair_accuracy_tolerance, noise)
            lowest = absolute_floor(production[name], allowed)
            checks.append(bounded(name, candidate[name], production[name], lowest, floor=True))
    return GateResult(
        passed=all(c.passed for c in checks),
        checks=tuple(checks),
        compared_with=compared_with,
        held_out_users=held_out_users,
    )
