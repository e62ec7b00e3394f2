"""File locks: a held lock refuses a non-waiting taker with its reason, and is free after."""

from __future__ import annotations

from pathlib import Path

import pytest

from streams.store.file_locks import LockBusy, exclusive


def try_lock(path: Path, busy: str) -> None:
    with exclusive(path, busy=busy):
        pass


def test_a_held_lock_refuses_at_once_and_is_free_after(tmp_path: Path) -> None:
    path = tmp_path / "nested" / ".lock"  # the folder is made on the way
    with exclusive(path), pytest.raises(LockBusy, match="a loop runs"):
        try_lock(path, "a loop runs")
    with exclusive(path, busy="first"), pytest.raises(LockBusy, match="second"):
        try_lock(path, "second")
    try_lock(path, "free again")  # released by both holders above
