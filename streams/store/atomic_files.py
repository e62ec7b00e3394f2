"""Replacing a file so that a reader never sees half of it and a crash loses nothing written.

The platform keeps its state in files (ledger batches, experiments, the model registry, the
impression spool), each written the same way: under a unique temporary name beside it (so two
writers of one path do not collide, and ``EventStore.remove_orphaned_temporaries`` recognises
what a crashed writer left), fsynced, renamed into place, and the folder fsynced so the rename
itself survives a power cut.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO


def fsync_dir(path: Path) -> None:
    """Make a rename or a new entry in ``path`` durable (POSIX keeps it in the folder's inode)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def temporary_beside(path: Path) -> Path:
    """``.NAME.<random>.tmp`` in ``path``'s folder: hidden, unique, recognisably temporary."""
    return path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")


def write_synced(tmp: Path, content: bytes | str | Callable[[BinaryIO], None]) -> None:
    """Write ``content`` to ``tmp`` and fsync it: durable, but visible while written, so only
    for a name no reader looks at yet."""
    with open(tmp, "wb") as sink:
        if callable(content):
            content(sink)
        else:
            sink.write(content.encode() if isinstance(content, str) else content)
        sink.flush()
        os.fsync(sink.fileno())


def write_atomically(
    path: Path,
    content: bytes | str | Callable[[BinaryIO], None],
    publish_under: contextlib.AbstractContextManager[object] | None = None,
) -> None:
    """Replace ``path`` with ``content`` (bytes, text as UTF-8, or a writer of the open file):
    readers see the old file or the new one, whole; once this returns, the new one is durable.
    ``publish_under`` is held around the rename alone (a lock that may refuse it)."""
    tmp = temporary_beside(path)
    try:
        write_synced(tmp, content)
        with publish_under or contextlib.nullcontext():
            os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def publish_new_file(
    staging: Path,
    content: Callable[[BinaryIO], None],
    name_now: Callable[[], Path],
    publish_under: contextlib.AbstractContextManager[object] | None = None,
) -> Path:
    """Write a new file as ``write_atomically`` does, under a temporary name in ``staging``, but
    let ``name_now`` pick its path at the moment it becomes visible (under ``publish_under``),
    so that names taken from the clock order files by when readers could first see them."""
    tmp = temporary_beside(staging / "new")
    try:
        write_synced(tmp, content)
        with publish_under or contextlib.nullcontext():
            path = name_now()
            path.parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
    return path


def move_into_place(written: Path, path: Path) -> None:
    """Make ``written`` (a whole file another writer made, DuckDB's ``COPY`` say) durable and
    rename it to ``path``, where readers see it whole or not at all."""
    with open(written, "rb") as f:
        os.fsync(f.fileno())
    path.parent.mkdir(parents=True, exist_ok=True)
    os.replace(written, path)
    fsync_dir(path.parent)
