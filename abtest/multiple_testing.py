"""Adjusting p-values for a family of tests: every metric of every treatment variant.

Five metrics and two treatments are ten tests; at alpha 0.05 each, an A/A experiment shows
something "significant" far more often than one time in twenty. Holm's step-down procedure
keeps the chance of any false positive (the family-wise error rate) at alpha; Benjamini and
Hochberg's keeps the expected share of false positives among the significant ones (the false
discovery rate) at alpha, and rejects more.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np

Correction = Literal["none", "holm", "bh"]


def holm(p_values: Sequence[float]) -> list[float]:
    """p~_(i) = max_{j <= i} min(1, (m - j + 1) p_(j)), p_(1) <= ... <= p_(m) sorted."""
    p = np.asarray(p_values, dtype=float)
    order = np.argsort(p, kind="stable")
    scaled = np.minimum(1.0, (len(p) - np.arange(len(p))) * p[order])
    adjusted = np.empty_like(p)
    adjusted[order] = np.maximum.accumulate(scaled)
    return adjusted.tolist()


def benjamini_hochberg(p_values: Sequence[float]) -> list[float]:
    """p~_(i) = min_{j >= i} min(1, m p_(j) / j), p_(1) <= ... <= p_(m) sorted."""
    p = np.asarray(p_values, dtype=float)
    order = np.argsort(p, kind="stable")
    scaled = np.minimum(1.0, len(p) * p[order] / np.arange(1, len(p) + 1))
    adjusted = np.empty_like(p)
    adjusted[order] = np.minimum.accumulate(scaled[::-1])[::-1]
    return adjusted.tolist()


def adjust(p_values: Sequence[float], correction: Correction) -> list[float]:
    """The family's p-values adjusted by ``correction`` ('none' leaves them as they are)."""
    if correction == "holm":
        return holm(p_values)
    if correction == "bh":
        return benjamini_hochberg(p_values)
    return list(p_values)
