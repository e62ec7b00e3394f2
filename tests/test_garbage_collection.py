"""Settling the derive worker's state out of the collector's passes loses no memory for good."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from streams.derive.garbage_collection import full_sweep, settle_long_lived


class Node:
    """A tracked object that can be weakly referenced and can point at itself."""

    link: object = None


@pytest.fixture(autouse=True)
def unfrozen_afterwards() -> Iterator[None]:
    yield
    gc.unfreeze()


def test_settled_objects_are_skipped_by_full_passes_yet_freed_when_dropped() -> None:
    kept = [Node() for _ in range(1000)]
    plain, cyclic = Node(), Node()
    cyclic.link = cyclic
    plain_ref, cyclic_ref = weakref.ref(plain), weakref.ref(cyclic)
    settle_long_lived()
    assert gc.get_freeze_count() >= len(kept)
    del plain, cyclic
    gc.collect()  # a full pass over the collector's generations skips the frozen ones
    assert plain_ref() is None  # no cycle: reference counting frees it all the same
    assert cyclic_ref() is not None  # a frozen cycle waits for a sweep
    assert full_sweep() >= 1
    assert cyclic_ref() is None
    assert gc.get_freeze_count() >= len(kept)  # what is still alive is settled again
