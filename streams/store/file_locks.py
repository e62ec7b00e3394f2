"""Exclusive locks on files (beside the store, the registries, the retrain loop): ``flock``,
which the kernel releases when the holder dies, so a crashed process never leaves a lock
behind."""

from __future__ import annotations

import contextlib
import fcntl
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def exclusive(path: Path, busy: str | None = None) -> Iterator[None]:
    """Hold the lock on ``path`` (created if missing): wait for any other holder, or, given
    ``busy``, raise ``LockBusy(busy)`` at once when another process holds it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX if busy is None else fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            raise LockBusy(busy) from exc
        yield


class LockBusy(RuntimeError):
    """Another process holds the lock."""
