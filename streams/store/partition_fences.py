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
import fcntl
import json
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

from streams.store.atomic_files import write_atomically

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
        """Hold the locks of ``partitions`` (in sorted order: no deadlock); their epochs."""
        with contextlib.ExitStack() as stack:
            epochs = {}
            for partition in sorted(set(partitions)):
                path = self._epoch_path(partition)
                path.parent.mkdir(parents=True, exist_ok=True)
                lock = stack.enter_context(open(path.with_suffix(".lock"), "a"))
                fcntl.flock(lock, fcntl.LOCK_EX)
                epochs[partition] = json.loads(path.read_text())["epoch"] if path.exists() else 0
            yield epochs

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
