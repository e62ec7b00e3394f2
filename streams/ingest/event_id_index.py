"""Which event ids a partition already holds, so that a resent event is stored as a copy.

A client that resends an event (a retry after a timeout, a replayed outbox) sends it as a new
Kafka record, which offsets cannot recognise. Its key is its user's id, so every copy lands in
the partition of the first one: a per-partition index of stored event ids finds them all.

Each id is kept as its digest (``streams.store.event_ids``): a sorted NumPy array, plus a set
of recent digests merged into it now and then, costs about 16 bytes per stored event instead
of a Python set's ~100.
"""

from __future__ import annotations

import numpy as np

from streams.store.event_ids import DIGEST

_MERGE_AT = 1 << 16  # recent ids held in a set before they are merged into the sorted array


class EventIdIndex:
    """The stored event ids of one partition: ``add`` says whether an id is new."""

    def __init__(self, stored: np.ndarray | None = None) -> None:
        stored = stored if stored is not None else np.empty(0, DIGEST)
        # The store hands them sorted and distinct; checking that costs a tenth of sorting.
        ordered = bool(np.all(stored[:-1] < stored[1:]))
        self._sorted = stored if ordered else np.unique(stored)
        self._recent: set[bytes] = set()

    def __len__(self) -> int:
        return len(self._sorted) + len(self._recent)

    def __contains__(self, digest: bytes) -> bool:
        if digest in self._recent:
            return True
        i = int(np.searchsorted(self._sorted, digest))
        # An element read out as bytes loses trailing NULs; compared as S16 arrays it does not.
        return bool((self._sorted[i : i + 1] == np.array(digest, DIGEST)).any())

    def add(self, digest: bytes) -> bool:
        """Record ``digest``; True if it was not held yet (the first copy of its event)."""
        if digest in self:
            return False
        self._recent.add(digest)
        if len(self._recent) >= _MERGE_AT:
            self._merge()
        return True

    def discard(self, digest: bytes) -> None:
        """Forget ``digest``: its event was not stored after all."""
        if digest in self._recent:
            self._recent.remove(digest)
            return
        i = int(np.searchsorted(self._sorted, digest))
        if (self._sorted[i : i + 1] == np.array(digest, DIGEST)).any():
            self._sorted = np.delete(self._sorted, i)

    def _merge(self) -> None:
        recent = np.sort(np.fromiter(self._recent, DIGEST, len(self._recent)))
        self._sorted = np.insert(self._sorted, np.searchsorted(self._sorted, recent), recent)
        self._recent.clear()
