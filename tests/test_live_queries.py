"""An analyst's second process queries the store during ingestion and never sees a torn state."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from streams.producer import EventProducer
from streams.settings import StreamSettings
from tests.feed_bytes import rating_records

USERS, PER_USER = 200, 100


def test_second_process_queries_during_ingestion(
    settings: StreamSettings, workers: Callable, tmp_path: Path
) -> None:
    target = USERS * PER_USER
    out = tmp_path / "reader.json"
    workers("w0")
    reader = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.live_reader",
            str(settings.store_dir),
            str(out),
            str(target),
            "120",
        ],
        cwd=Path(__file__).resolve().parent.parent,
    )
    try:
        # Paced production, so that ingestion is spread over many batches while the reader runs.
        with EventProducer(settings.kafka_bootstrap, settings.events_topic) as producer:
            for n, (key, value) in enumerate(rating_records(USERS, PER_USER), start=1):
                producer.send_raw(key, value)
                if n % 500 == 0:
                    producer.flush()
                    time.sleep(0.02)
        assert reader.wait(timeout=150) == 0
    finally:
        if reader.poll() is None:
            reader.kill()
    report = json.loads(out.read_text())
    assert report["error_count"] == 0, report["errors"]
    assert report["counts"][-1] == target
    distinct = sorted(set(report["counts"]))
    assert len(distinct) >= 5, f"the reader saw too few intermediate states: {distinct}"
    assert report["backwards"] == 0
    assert report["gaps"] == 0
