"""Following the ledger: each stored row handed out once, to a reader that keeps up with it.

The derive worker and serving's store reader fold new rows into state they keep in memory.
They start from the whole ledger (``current_ledger``: compacted files and the fresh files no
compacted file covers), then watch the fresh files' folder for names they have not read.
Compaction never hands them rows twice: compacted files hold only rows of fresh files, which
they read, or skipped as covered, already. Nor can it take rows from them unseen: a fresh file
is deleted only after the guard's ``readable_from`` passed the version that covered it, and
that version is newer than any the follower saw before the file appeared. So a follower whose
last poll saw version v and now finds ``readable_from`` above v may have missed a file, and
starts over from the whole ledger (with the default retention, only one away for an hour).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from streams.store.atomic_files import write_atomically
from streams.store.compaction_manifest import read_guard
from streams.store.event_store import EventStore, PinnedFiles


@dataclass(frozen=True)
class NewFiles:
    files: tuple[str, ...]  # relative to the store root, to read in this order
    from_scratch: bool  # the whole ledger: drop what was folded in before


class LedgerFollower:
    def __init__(self, store: EventStore) -> None:
        self.store = store
        self.seen: set[str] = set()
        self._version: int | None = None  # the manifest version seen before the last listing

    def poll(self) -> NewFiles:
        """The files to read now: the whole ledger at first (or after missing a deletion),
        then the fresh files not read yet."""
        if self._version is not None:
            version = read_guard(self.store.root).version
            present = self.store.ledger_files()
            if self._missed_nothing():
                self._version = version
                new = tuple(f for f in present if f not in self.seen)
                self.seen = set(present)  # deleted files' names can go: they never return
                return NewFiles(new, False)
        return self.poll_pinned()[1]

    def poll_pinned(self) -> tuple[PinnedFiles, NewFiles]:
        """The ledger as it is now, for a reader that must know exactly what it read (views
        over it: ``connect_store(root, ledger)``), and its fresh files not handed out before
        (the whole ledger at first, or after missing a deletion, as ``poll``)."""
        ledger = self.store.current_ledger()
        names = set(ledger.fresh) | ledger.covered
        if self._missed_nothing():
            new = NewFiles(tuple(sorted(names - self.seen)), False)
        else:
            new = NewFiles(ledger.files, True)
        self._version, self.seen = ledger.version, names
        return ledger, new

    def _missed_nothing(self) -> bool:
        """No file this follower had not seen can have been deleted since its last poll."""
        return (
            self._version is not None and read_guard(self.store.root).readable_from <= self._version
        )

    def save(self, path: Path) -> None:
        """Write where this follower is, durably, for a later process to ``load``."""
        write_atomically(path, json.dumps({"version": self._version, "seen": sorted(self.seen)}))

    def load(self, path: Path) -> None:
        """Go on from where the follower that last ``save``d to ``path`` was (if one did)."""
        if path.exists():
            saved = json.loads(path.read_text())
            self._version, self.seen = saved["version"], set(saved["seen"])
