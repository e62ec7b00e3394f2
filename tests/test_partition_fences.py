"""Partition fences: a claim bumps the epoch; a writer waiting for one partition's lock holds
none of the others (a stall while it waits must not block a successor)."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from streams.store.file_locks import LockBusy, exclusive
from streams.store.partition_fences import Fenced, PartitionFences
from tests.conftest import wait_for, waiting_on_a_file_lock


def try_lock(path: Path) -> bool:
    """Whether the lock on ``path`` is free (taken and let go at once)."""
    try:
        with exclusive(path, busy="held"):
            return True
    except LockBusy:
        return False


def test_claims_bump_epochs_and_fence_the_earlier_writer(tmp_path: Path) -> None:
    fences = PartitionFences(tmp_path)
    first = fences.claim([("t", 0), ("t", 1)], "wa")
    assert first == {("t", 0): 1, ("t", 1): 1}
    assert fences.claim([("t", 1)], "wb") == {("t", 1): 2}
    with fences.publishing({("t", 0): 1}):
        pass  # partition 0 is still wa's
    with pytest.raises(Fenced, match=r"t\[1\] \(now epoch 2\)"), fences.publishing(first):
        pass


def test_a_writer_waiting_for_one_partition_holds_none_of_the_others(tmp_path: Path) -> None:
    fences = PartitionFences(tmp_path)
    fences.claim([("t", 0), ("t", 1)], "wa")
    lock_of = {p: fences.dir / "t" / f"{p}.lock" for p in (0, 1)}
    claimed: dict = {}
    with exclusive(lock_of[1]):  # another writer holds partition 1
        waiter = threading.Thread(
            target=lambda: claimed.update(fences.claim([("t", 0), ("t", 1)], "wb"))
        )
        waiter.start()
        wait_for(lambda: waiting_on_a_file_lock(os.getpid()), 10, "the claim waiting")
        assert try_lock(lock_of[0]), "the waiting claim holds partition 0"
        assert not claimed
    waiter.join(timeout=10)
    assert claimed == {("t", 0): 2, ("t", 1): 2}
