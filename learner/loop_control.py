"""The retrain loop's files beside the registry, which other processes read or write: its lock
(held while a loop runs), its state (``loop.json``) and a pending request for a retrain.
Kept apart from the loop (``learner.retrain_loop``) so that status commands import no model
code.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

from learner.registry import ModelRegistry
from streams.store.atomic_files import write_atomically
from streams.store.file_locks import LockBusy, exclusive

LOOP_LOCK, LOOP_STATE, REQUEST = "loop.lock", "loop.json", "retrain.request"


def request_retrain(registry: ModelRegistry, who: str) -> Path:
    """Ask the running loop for a retrain (requests made before it starts one coalesce)."""
    registry.root.mkdir(parents=True, exist_ok=True)
    path = registry.root / REQUEST
    write_atomically(path, json.dumps({"by": who, "at": datetime.now(UTC).isoformat()}))
    return path


def loop_running(registry: ModelRegistry) -> bool:
    """Whether a loop holds the registry's loop lock (probed by taking it for an instant)."""
    if not (registry.root / LOOP_LOCK).exists():
        return False
    try:
        with exclusive(registry.root / LOOP_LOCK, busy="a loop runs"):
            return False
    except LockBusy:
        return True


def read_loop_state(registry: ModelRegistry) -> dict[str, object] | None:
    path = registry.root / LOOP_STATE
    if not path.exists():
        return None
    state: dict[str, object] = json.loads(path.read_text())
    state["running"] = loop_running(registry)
    return state


class LoopAlreadyRunning(RuntimeError):
    """Another loop serves this registry."""


@contextlib.contextmanager
def loop_lock(registry: ModelRegistry) -> Iterator[None]:
    try:
        with exclusive(registry.root / LOOP_LOCK, busy="busy"):
            yield
    except LockBusy as exc:
        raise LoopAlreadyRunning(f"a retrain loop already serves {registry.root}") from exc
