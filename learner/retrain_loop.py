"""The retrain loop: a long-running scheduler that retrains when a trigger fires.

Triggers (``RetrainSettings``), checked every ``poll_s`` seconds:

* requested: ``pagellm retrain now`` while a loop runs leaves ``registry/retrain.request``;
* first: no retrain has run on this store yet;
* interval: the last retrain started ``interval_s`` ago or more;
* new pairs: ``min_new_pairs`` preference pairs were derived after the last retrain started
  (counted in the derive worker's ``preference_pairs`` table; without a derive worker this
  trigger never fires, and the loop says so once).

Triggers are checked only between retrains, so however many fire during one, they coalesce
into the single check after it; one retrain runs at a time (``learner.retrain``'s lock). The
training stages run as Ray Train jobs on the Ray runtime the loop holds for its lifetime.

The loop holds ``registry/loop.lock`` while it runs (how ``retrain now`` knows it is there) and
keeps its state in ``registry/loop.json`` for ``retrain status``.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import duckdb

from learner.loop_control import LOOP_STATE, REQUEST, loop_lock
from learner.registry import ModelRegistry
from learner.retrain import RetrainBusy, RetrainFailed, RetrainJob, retrain
from learner.retrain_journal import read_retrains
from learner.settings import RetrainSettings
from schemas.model_registry import RetrainRecord
from streams.store.atomic_files import write_atomically
from streams.store.store_views import connect_store

log = logging.getLogger(__name__)


def due_trigger(
    now: datetime,
    last: RetrainRecord | None,
    requested: bool,
    new_pairs: int | None,
    settings: RetrainSettings,
) -> str | None:
    """Why a retrain is due now, or None: requested, first, interval, then new pairs."""
    if requested:
        return "requested"
    if last is None:
        return "first retrain of this store"
    waited = (now - last.started_at).total_seconds()
    if settings.interval_s and waited >= settings.interval_s:
        return f"interval: {waited:.0f} s since the last retrain (every {settings.interval_s:g} s)"
    if settings.min_new_pairs and new_pairs is not None and new_pairs >= settings.min_new_pairs:
        return f"new pairs: {new_pairs} since the last retrain (at least {settings.min_new_pairs})"
    return None


def count_new_pairs(store_dir: Path, since: datetime) -> int | None:
    """Preference pairs the derive worker wrote after ``since``; None without its table."""
    try:
        with connect_store(store_dir) as con:
            return int(
                con.execute(  # type: ignore[index]
                    "SELECT count(*) FROM preference_pairs WHERE version > ?",
                    [int(since.timestamp() * 1e9)],
                ).fetchone()[0]
            )
    except (duckdb.CatalogException, FileNotFoundError):
        return None


class RetrainLoop:
    """Checks the triggers every ``poll_s`` and runs one retrain when one fires."""

    def __init__(
        self,
        store_dir: Path,
        settings: RetrainSettings,
        make_job: Callable[[str], RetrainJob],
        on_retrain: Callable[[RetrainRecord], None] = lambda record: None,
    ) -> None:
        self.store_dir, self.settings = store_dir, settings
        self.make_job, self.on_retrain = make_job, on_retrain
        self.registry = ModelRegistry.for_store(store_dir)
        self.warned_no_pairs = False
        self.checks = 0

    def write_state(self, state: str, **details: object) -> None:
        doc = {"pid": os.getpid(), "state": state, "since": datetime.now(UTC).isoformat()}
        write_atomically(self.registry.root / LOOP_STATE, json.dumps(doc | details, default=str))

    def check(self) -> str | None:
        """The trigger that fires now, if any (a pending request is taken)."""
        request = self.registry.root / REQUEST
        requested = request.exists()
        retrains = read_retrains(self.registry)
        last = retrains[-1] if retrains else None
        new_pairs = count_new_pairs(self.store_dir, last.started_at) if last else None
        if new_pairs is None and last and self.settings.min_new_pairs and not self.warned_no_pairs:
            log.warning(
                "no preference_pairs table in %s (no derive worker has run): the "
                "new-pairs trigger cannot fire",
                self.store_dir,
            )
            self.warned_no_pairs = True
        trigger = due_trigger(datetime.now(UTC), last, requested, new_pairs, self.settings)
        if requested:
            request.unlink(missing_ok=True)
        self.checks += 1
        return trigger

    def run_once(self) -> RetrainRecord | None:
        """One check, and the retrain it calls for."""
        trigger = self.check()
        if trigger is None:
            return None
        self.write_state("retraining", trigger=trigger)
        try:
            record = retrain(self.make_job(trigger))
        except RetrainBusy as exc:  # a foreground `retrain now` got there first
            log.info("%s; the trigger (%s) waits for the next check", exc, trigger)
            return None
        except RetrainFailed as exc:
            log.error("%s", exc)
            record = read_retrains(self.registry)[-1]
        self.on_retrain(record)
        return record

    def run(self, stop: threading.Event) -> None:
        """Until ``stop`` is set (a retrain in progress finishes first)."""
        with loop_lock(self.registry):
            log.info(
                "retrain loop on %s: every %g s, or %d new pairs; checking every %g s",
                self.store_dir,
                self.settings.interval_s,
                self.settings.min_new_pairs,
                self.settings.poll_s,
            )
            while not stop.is_set():
                self.run_once()
                self.write_state("idle")
                stop.wait(self.settings.poll_s)
            self.write_state("stopped")
