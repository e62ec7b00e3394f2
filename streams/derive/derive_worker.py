"""The derive worker: keeps the training data in the store live as events arrive.

It tails the event store rather than Kafka: the ledger is already validated, deduplicated and
in partition order, so derivation needs no second consumer with its own delivery logic. On
start it derives from the whole ledger (a full rebuild); then each poll folds in only the new
files' events (``LedgerFollower``), touching only their users and items, and appends their new
rows. Every
``refresh_every_s`` it rebuilds the users whose popularity tie-breaks went stale.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from datetime import UTC, datetime

from streams.derive.derived_state import DeriveConfig, DerivedState
from streams.derive.derived_tables import derived_tables, init_derived
from streams.derive.garbage_collection import full_sweep, settle_long_lived
from streams.derive.snapshot_store import read_stream
from streams.store.atomic_files import write_atomically
from streams.store.event_store import EventStore
from streams.store.ledger_follower import LedgerFollower

log = logging.getLogger(__name__)

WORKERS_DIR = "workers"


@dataclass
class PollReport:
    files: int = 0
    events: int = 0
    users: int = 0
    seconds: float = 0.0


class DeriveWorker:
    def __init__(self, store: EventStore, config: DeriveConfig, writer_id: str = "derive") -> None:
        self.store, self.writer_id = store, writer_id
        self.state = DerivedState({}, config)
        self.follower = LedgerFollower(store)
        init_derived(store)

    def poll(self) -> PollReport:
        """Fold in the files that appeared since the last poll; write what changed."""
        start = time.perf_counter()
        new = self.follower.poll()
        if not new.files:
            return PollReport()
        # A deleted item keeps its last record here: training reads what users did with it.
        events, catalogue, _ = read_stream(self.store, new.files)
        if new.from_scratch:  # the first poll is a full rebuild: exact, nothing stale
            self.state = DerivedState.rebuild(catalogue, self.state.config, events)
            users, items = set(self.state.users), set(self.state.items)
        else:
            before = {i: (s.count, s.rating_sum) for i, s in self.state.items.items()}
            self.state.update_catalogue(catalogue)
            users = self.state.apply(events)
            items = {
                i for i, s in self.state.items.items() if before.get(i) != (s.count, s.rating_sum)
            }
        self._write(users, items | set(catalogue))
        return PollReport(len(new.files), len(events), len(users), time.perf_counter() - start)

    def write_heartbeat(self, report: PollReport) -> None:
        """``STORE/workers/<id>.json``: when it last polled and how far it has folded in (what
        ``pagellm status`` shows as the derive worker's lag)."""
        doc = {
            "pid": os.getpid(),
            "polled_at": datetime.now(UTC).isoformat(),
            "files_folded": len(self.follower.seen),
            "events_last_poll": report.events,
        }
        path = self.store.root / WORKERS_DIR / f"{self.writer_id}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(path, json.dumps(doc))

    def refresh(self) -> int:
        """Rebuild and rewrite the stale users; returns how many there were."""
        stale = self.state.refresh()
        self._write(set(stale), set())
        return len(stale)

    def _write(self, users: set[str], items: set[str]) -> None:
        if not users and not items:
            return
        for dataset, table in derived_tables(self.state, users, items).items():
            if table.num_rows:
                self.store.write_table(dataset, table, self.writer_id)

    def run(
        self, interval_s: float, refresh_every_s: float, stop_after_s: float | None = None
    ) -> None:
        """Poll until interrupted (or for ``stop_after_s``), refreshing now and then."""
        started = last_refresh = time.monotonic()
        while stop_after_s is None or time.monotonic() - started < stop_after_s:
            report = self.poll()
            if report.events:
                log.info(
                    "derived %d events of %d users from %d files in %.2f s",
                    report.events,
                    report.users,
                    report.files,
                    report.seconds,
                )
            self.write_heartbeat(report)
            if report.files:  # an idle poll changed no state: nothing new to settle
                settle_long_lived()
            if time.monotonic() - last_refresh >= refresh_every_s:
                log.info("refreshed %d stale users", self.refresh())
                unreachable = full_sweep()
                log.debug("full sweep: %d unreachable objects", unreachable)
                last_refresh = time.monotonic()
            time.sleep(interval_s)
