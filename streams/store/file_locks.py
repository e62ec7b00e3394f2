"""Exclusive locks on files (beside the store, the registries, the retrain loop): ``flock``,
which the kernel releases when the holder dies, so a crashed process never leaves a lock
behind."""

from __future__ import annotations

import contextlib
import fcntl
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def exclusive(path: Path) -> Iterator[None]:
    """Hold the lock on ``path`` (created if missing), waiting for any other holder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


@contextlib.contextmanager
def exclusive_or_busy(path: Path, busy: str) -> Iterator[None]:
    """Hold the lock on ``path`` (created if missing), or raise ``LockBusy(busy)`` at once when
    another process holds it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            raise LockBusy(busy) from exc
        yield


class LockBusy(RuntimeError):
    """Another process holds the lock."""
