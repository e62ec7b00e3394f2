"""Fencing: only the latest writer to take a Kafka partition may add its records to the store.

A worker that stalls past its session timeout (a long GC pause, SIGSTOP) loses its partitions
to a successor, which reads the store's watermarks and writes on from there. When the stalled
worker wakes up, the batch it held would land beside the successor's copy of the same records.
So taking a partition bumps its epoch (``claim``), and a batch is made visible (renamed into
place) only while every partition it holds still has the epoch its writer claimed
(``publishing``). Both run under the partition's file lock, so a claim happens before or after
a publication, never in between: the successor either sees the batch in the watermarks it reads
after claiming, or the batch is refused. Locks are ``flock`` on files beside the store, which
local and NFSv4 file systems honour.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

from streams.store.atomic_files import write_atomically
from streams.store.file_locks import LockBusy, exclusive

Partition = tuple[str, int]  # (topic, partition)


class Fenced(RuntimeError):
    """A partition was taken by another writer since this one claimed it."""


class PartitionFences:
    def __init__(self, root: Path) -> None:
        self.dir = root / "fences"

    def _epoch_path(self, partition: Partition) -> Path:
        topic, number = partition
        return self.dir / topic / f"{number}.json"

    @contextlib.contextmanager
    def _locked(self, partitions: Iterable[Partition]) -> Iterator[dict[Partition, int]]:
        """Hold the locks of ``partitions``, all or none; their epochs.

        A writer never waits for one lock while holding another: it takes them without
        waiting, and at the first that is busy lets go of the rest and waits for that one
        alone. A writer stalled while it waits (SIGSTOP, a pause) then holds nothing a
        successor needs: held in sorted order instead, a batch of partitions 0 and 1 that
        waited on 1 kept 0 from its successor for as long as the stall lasted."""
        wanted = sorted(set(partitions))
        paths = {p: self._epoch_path(p) for p in wanted}
        with contextlib.ExitStack() as stack:
            while busy := _lock_all(stack, [paths[p].with_suffix(".lock") for p in wanted]):
                stack.close()  # let go of the rest, then wait for the busy one alone
                with exclusive(busy):
                    pass
            yield {
                p: json.loads(path.read_text())["epoch"] if path.exists() else 0
                for p, path in paths.items()
            }

    def claim(self, partitions: Iterable[Partition], writer_id: str) -> dict[Partition, int]:
        """Take ``partitions``: each epoch grows by one; returns the epochs now this writer's."""
        with self._locked(partitions) as epochs:
            for partition, epoch in epochs.items():
                epochs[partition] = epoch + 1
                doc = {"epoch": epoch + 1, "writer": writer_id}
                write_atomically(self._epoch_path(partition), json.dumps(doc))
            return epochs

    @contextlib.contextmanager
    def publishing(self, claimed: Mapping[Partition, int]) -> Iterator[None]:
        """Hold the partitions while a batch becomes visible; ``Fenced`` if one was taken."""
        with self._locked(claimed) as epochs:
            taken = {p: epochs[p] for p, epoch in claimed.items() if epochs[p] != epoch}
            if taken:
                names = ", ".join(f"{t}[{n}] (now epoch {e})" for (t, n), e in taken.items())
                raise Fenced(
                    f"partitions {names} were taken by another writer since this one claimed "
                    "them: its batch is not stored, the new owner has those records"
                )
            yield


def _lock_all(stack: contextlib.ExitStack, paths: list[Path]) -> Path | None:
    """Take every lock in ``paths`` without waiting, each held until ``stack`` closes; the
    first one another holder has, if any (the locks taken before it stay on ``stack``)."""
    for path in paths:
        try:
            stack.enter_context(exclusive(path, busy=f"{path} is held"))
        except LockBusy:
            return path
    return None
