"""Per-variant sufficient statistics of per-user vectors: all the statistics ever need.

For users i = 1..n with columns z_i (say gmv, pre_gmv), DuckDB aggregates n, the sums
s = sum z_i and the cross products Q = sum z_i z_i^T; means and covariances follow, so a report
over ten million users moves a few numbers per variant into Python, not the users.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cache, cached_property

import numpy as np

# Q - n m m^T cancels: users who all spent 19.99 left a variance of 1e-14 instead of 0, and a
# "significant" lift with p = 0. A variance under this share of its column's mean square
# (a coefficient of variation under 3e-5; sums over n users carry n x 1e-16 of rounding) is 0.
ROUNDING = 1e-9


@cache  # a report names the same few dozen pairs for every variant, phase and metric
def cross_name(a: str, b: str) -> str:
    """The SQL alias of sum(a * b) (the pair in canonical order)."""
    first, second = sorted((a, b))
    return f"{first}__x__{second}"


@dataclass(frozen=True)
class Moments:
    """n, s = sum z, Q = sum z z^T over the users of one variant, for the named columns."""

    columns: tuple[str, ...]
    n: int
    sums: np.ndarray
    cross: np.ndarray

    @classmethod
    def from_aggregates(cls, columns: Sequence[str], row: Mapping[str, float]) -> Moments:
        """From a row holding n, sum_<c> and the cross products named by ``cross_name``
        (missing ones are 0: a variant without users)."""
        k = len(columns)
        sums = np.array([float(row.get(f"sum_{c}") or 0.0) for c in columns])
        cross = np.empty((k, k))
        for i, a in enumerate(columns):
            for j, b in enumerate(columns):
                cross[i, j] = float(row.get(cross_name(a, b)) or 0.0)
        return cls(tuple(columns), int(row["n"]), sums, cross)

    @classmethod
    def from_values(cls, columns: Sequence[str], values: np.ndarray) -> Moments:
        """From per-user rows (n x k): what SQL aggregates, computed in Python (tests, sims)."""
        values = np.asarray(values, dtype=float)
        return cls(tuple(columns), len(values), values.sum(axis=0), values.T @ values)

    def select(self, columns: Sequence[str]) -> Moments:
        index = [self.columns.index(c) for c in columns]
        return Moments(tuple(columns), self.n, self.sums[index], self.cross[np.ix_(index, index)])

    def mean(self) -> np.ndarray:
        """m = s / n."""
        return self.sums / self.n

    @cached_property  # the delta method asks for it once per variance and covariance it forms
    def covariance(self) -> np.ndarray:
        """C = (Q - n m m^T) / (n - 1), the unbiased sample covariance of the columns; a column
        whose variance is under ROUNDING x Q_jj / (n - 1) is constant (its row and column 0)."""
        m = self.mean()
        c = (self.cross - self.n * np.outer(m, m)) / (self.n - 1)
        constant = np.diag(c) <= ROUNDING * np.diag(self.cross) / (self.n - 1)
        c[constant, :] = 0.0
        c[:, constant] = 0.0
        return c
