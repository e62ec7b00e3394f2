"""The manifest of the store's compacted files: the one file that says which files hold what.

Writers append one small file per write into a dataset's folder (the fresh files: ingest
workers' micro-batches in ``ingested/``, the derive worker's rows in ``derived/...``), where
live readers find them by glob. The compactor merges them into a few large files per period
(the ledger's event date, another dataset's write date) under ``compacted/<dataset>/``, and
records here, per dataset, which large files are active, which small files their rows came
from (``covered``: readers skip those), and which large files a later merge replaced
(``retired``). Readers build their views from one version of it, so a query sees every row
once whether it started before, during or after a compaction.

Nothing is deleted while a reader may still use it: a covered or retired file goes only
``retention_s`` after the version that stopped using it, and before deleting the compactor
raises ``readable_from`` in a small guard file that every view checks, so a view older than
that fails loudly instead of silently missing the deleted rows.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

from pydantic import BaseModel, Field

from streams.store.atomic_files import fsync_dir, temporary_beside, write_atomically
from streams.store.file_locks import exclusive

# A rejected record has no event time of its own: it goes with the day it was ingested.
EVENT_DATE_SQL = "(coalesce(ts, ingested_at) AT TIME ZONE 'UTC')::DATE"
COMPACTED_DIR = "compacted"
MANIFEST_FILE = "manifest.json"
GUARD_FILE = "readable_from.json"


class CompactedFile(BaseModel):
    period: str  # the day its rows belong to (see ``compactor.Layout``)
    rows: int
    bytes: int


class Retirement(BaseModel):
    """When a file stopped being read: views of ``version`` and later do not use it."""

    version: int
    at: datetime


class CompactedDataset(BaseModel):
    """One dataset's part; every path is relative to the store root."""

    files: dict[str, CompactedFile] = {}  # active compacted files
    covered: dict[str, Retirement] = {}  # fresh files whose rows an active file holds
    retired: dict[str, Retirement] = {}  # compacted files merged into a larger one


class CompactionManifest(BaseModel):
    version: int = 0
    compacted_at: datetime | None = None  # when ``version`` was committed
    readable_from: int = Field(0, description="views built from older versions may fail")
    datasets: dict[str, CompactedDataset] = {}
    offsets: dict[str, int] = {}  # the ledger's: "topic/partition" -> highest offset compacted

    def of(self, dataset: str) -> CompactedDataset:
        return self.datasets.get(dataset, CompactedDataset())


def compacted_dir(root: Path) -> Path:
    return root / COMPACTED_DIR


def guard_path(root: Path) -> Path:
    return compacted_dir(root) / GUARD_FILE


def read_manifest(root: Path) -> CompactionManifest:
    """The current manifest (version 0, empty, before the first compaction)."""
    path = compacted_dir(root) / MANIFEST_FILE
    if not path.exists():
        return CompactionManifest()
    return CompactionManifest.model_validate_json(path.read_bytes())


def write_manifest(root: Path, manifest: CompactionManifest) -> None:
    write_atomically(compacted_dir(root) / MANIFEST_FILE, manifest.model_dump_json(indent=1))


class Guard(BaseModel):
    """The small file views and followers check at every read: the manifest version current
    when it was written, and the oldest version whose views may still run."""

    version: int = 0
    readable_from: int = 0


def read_guard(root: Path) -> Guard:
    path = guard_path(root)
    return Guard.model_validate_json(path.read_bytes()) if path.exists() else Guard()


def write_guard(root: Path, guard: Guard) -> None:
    write_atomically(guard_path(root), guard.model_dump_json())


def ensure_guard(root: Path) -> None:
    """Create the guard file (version 0) unless it exists; never overwrites a newer one."""
    path = guard_path(root)
    if path.exists():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_beside(path)
    tmp.write_text(Guard().model_dump_json())
    try:
        os.link(tmp, path)  # fails if the compactor wrote it meanwhile: theirs is newer
    except FileExistsError:
        pass
    finally:
        tmp.unlink()
    fsync_dir(path.parent)


@contextlib.contextmanager
def compaction_lock(root: Path) -> Iterator[None]:
    """One compactor at a time per store."""
    with exclusive(compacted_dir(root) / ".lock"):
        yield
