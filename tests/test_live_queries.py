"""An analyst's second process queries the store during ingestion and never sees a torn state."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Callable
from itertools import islice
from pathlib import Path

import pytest

from streams.ingest.producer import EventProducer
from streams.settings import StreamSettings
from tests.conftest import wait_for
from tests.feed_bytes import rating_records

pytestmark = pytest.mark.kafka

USERS, PER_USER = 200, 100
BATCHES = 5  # production waits after each batch until the reader has seen all of it stored


def test_second_process_queries_during_ingestion(
    settings: StreamSettings, workers: Callable, tmp_path: Path
) -> None:
    target = USERS * PER_USER
    per_batch = target // BATCHES
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
        stdout=subprocess.PIPE,
        text=True,
    )
    seen: list[int] = []  # each new count the reader observed, in its order

    def follow() -> None:
        for line in reader.stdout:  # type: ignore[union-attr]
            seen.append(int(line))

    follower = threading.Thread(target=follow, daemon=True)
    follower.start()
    try:
        records = rating_records(USERS, PER_USER)
        with EventProducer(settings.kafka_bootstrap, settings.events_topic) as producer:
            for batch in range(1, BATCHES + 1):
                for key, value in islice(records, per_batch):
                    producer.send_raw(key, value)
                producer.flush()
                sent = batch * per_batch
                # Nothing more is produced until the reader has seen this batch stored, so every
                # batch boundary is a state the reader observes, however fast the machine.
                wait_for(
                    lambda sent=sent: seen and seen[-1] >= sent,
                    60,
                    f"the reader to see {sent} ratings",
                    interval_s=0.02,
                )
                assert seen[-1] == sent, f"more ratings visible than were sent: {seen[-5:]}"
        assert producer.report.sent == target
        assert reader.wait(timeout=60) == 0
    finally:
        if reader.poll() is None:
            reader.kill()
            reader.wait(10)
    follower.join(10)
    report = json.loads(out.read_text())
    assert report["error_count"] == 0, report["errors"]
    assert report["backwards"] == 0 and seen == sorted(seen), seen
    assert report["gaps"] == 0
    assert report["counts"][-1] == target
    boundaries = {batch * per_batch for batch in range(1, BATCHES + 1)}
    assert boundaries <= set(report["counts"]), sorted(set(report["counts"]))
