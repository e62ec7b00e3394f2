"""Hashing users into buckets, and buckets into variants by allocation ranges.

The hash, so that any service in any language can reproduce an assignment::

    bucket(salt, user_id) = int(hex(md5(utf8(salt + ":" + user_id)))[0:8], 16) mod 10000

that is, the first four bytes of the MD5 digest read as a big-endian unsigned integer, modulo
``BUCKETS``. (2^32 mod 10000 = 7296, so the low buckets are favoured by one part in 430,000.)
In DuckDB: ``('0x' || md5(salt || ':' || user_id)[1:8])::UBIGINT % 10000``.

An allocation gives each variant a set of buckets as half-open ranges ``[lo, hi)``. A new
allocation is contiguous in variant order; ``reallocate`` changes shares while moving users only
into variants that grow: a shrinking variant gives up its highest buckets and a growing one takes
exactly those, so nobody leaves a variant that keeps or grows its share.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence

BUCKETS = 10_000

Ranges = tuple[tuple[int, int], ...]
Allocation = dict[str, Ranges]


def bucket(salt: str, user_id: str) -> int:
    """bucket = int(md5(salt ':' user_id)[:4 bytes], big-endian) mod 10000."""
    digest = hashlib.md5(f"{salt}:{user_id}".encode(), usedforsecurity=False).digest()
    return int.from_bytes(digest[:4], "big") % BUCKETS


def bucket_counts(weights: Mapping[str, float], total: int = BUCKETS) -> dict[str, int]:
    """Buckets per variant: count_v = floor(total w_v / sum w), leftovers by largest remainder."""
    weight_sum = sum(weights.values())
    if weight_sum <= 0 or any(w < 0 for w in weights.values()):
        raise ValueError("weights: must be non-negative with a positive sum")
    exact = {name: total * w / weight_sum for name, w in weights.items()}
    counts = {name: int(x) for name, x in exact.items()}
    by_remainder = sorted(exact, key=lambda name: (counts[name] - exact[name], name))
    for name in by_remainder[: total - sum(counts.values())]:
        counts[name] += 1
    return counts


def ranges_size(ranges: Ranges) -> int:
    """|ranges| = sum (hi - lo)."""
    return sum(hi - lo for lo, hi in ranges)


def empty_variants(allocation: Allocation) -> list[str]:
    """The variants that hold no bucket: no user can ever be assigned to them."""
    return [name for name, ranges in allocation.items() if ranges_size(ranges) == 0]


def as_ranges(buckets: Sequence[int]) -> Ranges:
    """Sorted bucket numbers as the fewest half-open ranges."""
    merged: list[list[int]] = []
    for b in sorted(buckets):
        if merged and merged[-1][1] == b:
            merged[-1][1] = b + 1
        else:
            merged.append([b, b + 1])
    return tuple((lo, hi) for lo, hi in merged)


def expand(ranges: Ranges) -> list[int]:
    """The bucket numbers the ranges hold, in order."""
    return [b for lo, hi in ranges for b in range(lo, hi)]


def initial_allocation(weights: Mapping[str, float]) -> Allocation:
    """Contiguous ranges in the order the variants are given, sized by ``bucket_counts``."""
    allocation: Allocation = {}
    start = 0
    for name, count in bucket_counts(weights).items():
        allocation[name] = ((start, start + count),) if count else ()
        start += count
    return allocation


def reallocate(current: Allocation, weights: Mapping[str, float]) -> Allocation:
    """New shares; shrinking variants free their highest buckets, growing ones take only those."""
    if set(current) != set(weights):
        raise ValueError(
            f"weights: give exactly the variants {sorted(current)}, got {sorted(weights)}"
        )
    targets = bucket_counts(weights)
    held = {name: expand(current[name]) for name in current}
    freed: list[int] = []
    for name, buckets in held.items():
        surplus = len(buckets) - targets[name]
        if surplus > 0:
            freed.extend(buckets[-surplus:])
            del buckets[-surplus:]
    freed.sort()
    for name, buckets in held.items():
        need = targets[name] - len(buckets)
        if need > 0:
            buckets.extend(freed[:need])
            del freed[:need]
    return {name: as_ranges(buckets) for name, buckets in held.items()}


def variant_of(allocation: Allocation, bucket_number: int) -> str | None:
    """The variant whose ranges hold ``bucket_number`` (None if no variant does)."""
    for name, ranges in allocation.items():
        if any(lo <= bucket_number < hi for lo, hi in ranges):
            return name
    return None
