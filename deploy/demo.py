"""The main job on an embedded default: broker, ingest workers, a live feed, analyst queries.

With ``PAGELLM_KAFKA_BOOTSTRAP`` set it uses that cluster; otherwise it starts a local broker
under ``var/demo/kafka`` and stops it at the end. The event store stays in ``var/demo/store``
for the analyst to query afterwards.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from contextlib import ExitStack
from pathlib import Path

from rich.console import Console

from deploy.local_kafka import LocalKafka
from streams.cli import print_query
from streams.feed import CORRUPTIONS, FeedConfig, FeedGenerator
from streams.producer import EventProducer
from streams.progress_bars import progress_bar
from streams.settings import StreamSettings
from streams.store_views import connect_store
from streams.topics import ensure_topics
from streams.worker_process import spawn_worker, stop_worker

log = logging.getLogger(__name__)
console = Console(soft_wrap=True)

ANALYST_QUERIES = {
    "Events by type": "SELECT type, count(*) AS events FROM events GROUP BY 1 ORDER BY 2 DESC",
    "CTR and GMV by model version": """
        WITH shown AS (SELECT model_version, count(*) AS impressed FROM impressed_items GROUP BY 1),
             clicked AS (SELECT i.model_version, count(*) AS clicks FROM clicks c
                         JOIN impressions i USING (request_id) GROUP BY 1),
             bought AS (SELECT i.model_version, sum(p.gmv) AS gmv FROM purchases p
                        JOIN impressions i USING (request_id) GROUP BY 1)
        SELECT model_version, impressed, clicks, round(clicks / impressed, 4) AS ctr, gmv
        FROM shown LEFT JOIN clicked USING (model_version) LEFT JOIN bought USING (model_version)
        ORDER BY model_version""",
    "Dead-lettered records by reason": """
        SELECT split_part(reason, ':', 1) AS field, count(*) AS records,
               any_value(reason) AS example
        FROM rejected_events GROUP BY 1 ORDER BY records DESC""",
}


def run_demo(events: int, workers: int, invalid_every: int, root: Path, timeout_s: float) -> int:
    """Stream ``events`` generated events through ingestion and show the analysts' view."""
    with ExitStack() as cleanup:
        bootstrap = os.environ.get("PAGELLM_KAFKA_BOOTSTRAP")
        if bootstrap is None:
            kafka = LocalKafka(root / "kafka")
            console.print("starting a local Kafka broker (first run fetches its jars) ...")
            bootstrap = kafka.start().bootstrap
            cleanup.callback(kafka.stop)
            # A fresh broker restarts offsets at 0, so a store from an earlier broker would
            # take the new events for replays: start the demo's store afresh too.
            shutil.rmtree(root / "store", ignore_errors=True)
        settings = StreamSettings(kafka_bootstrap=bootstrap, store_dir=root / "store")
        ensure_topics(settings)
        console.print(
            f"Kafka at {bootstrap}; topic {settings.events_topic} "
            f"({settings.partitions} partitions); store {settings.store_dir}"
        )

        procs = [
            spawn_worker(settings, f"demo-w{i}", root / "logs" / f"worker-{i}.log")
            for i in range(workers)
        ]
        for proc in procs:
            cleanup.callback(stop_worker, proc)

        expected_before = _stored(settings.store_dir)
        generator = FeedGenerator(FeedConfig(seed=int(time.time())))
        kinds = sorted(CORRUPTIONS)
        with (
            progress_bar(console) as progress,
            EventProducer(bootstrap, settings.events_topic) as producer,
        ):
            task = progress.add_task("producing events", total=events)
            for n, event in enumerate(generator.events(events), start=1):
                if invalid_every and n % invalid_every == 0:
                    raw = generator.corrupt(event, kinds[(n // invalid_every) % len(kinds)])
                    producer.send_raw(event.user_id.encode(), raw)
                else:
                    producer.send(event)
                progress.advance(task)
        if producer.report.failed:
            console.print(f"[red]{producer.report.failed} events were not acknowledged[/red]")
            return 1

        target = expected_before + producer.report.sent
        if not _wait_until_stored(settings.store_dir, target, timeout_s, procs):
            console.print(
                f"[red]ingestion did not catch up within {timeout_s:.0f} s;[/red] "
                f"worker logs are in {root / 'logs'}"
            )
            return 1

        con = connect_store(settings.store_dir)
        for title, query in ANALYST_QUERIES.items():
            print_query(con, query, title=title)
        console.print(
            f"\nThe store stays at {settings.store_dir.resolve()}. Query it with\n"
            f"  .venv/bin/pagellm store sql --store {settings.store_dir} "
            '"SELECT type, count(*) FROM events GROUP BY 1"\n'
            f"or open {settings.store_dir.resolve() / 'catalog.duckdb'} read-only in DuckDB."
        )
    return 0


def _stored(store_dir: Path) -> int:
    try:
        return int(connect_store(store_dir).execute("SELECT count(*) FROM ingested").fetchone()[0])
    except FileNotFoundError:
        return 0


def _wait_until_stored(store_dir: Path, target: int, timeout_s: float, procs: list) -> bool:
    """Poll the analysts' view until it holds ``target`` records (the live count is shown)."""
    deadline = time.monotonic() + timeout_s
    with progress_bar(console) as progress:
        task = progress.add_task("visible in DuckDB", total=target)
        while time.monotonic() < deadline:
            stored = _stored(store_dir)
            progress.update(task, completed=stored)
            if stored >= target:
                return True
            if any(p.poll() is not None for p in procs):
                console.print("[red]an ingest worker exited[/red]")
                return False
            time.sleep(0.25)
    return False
