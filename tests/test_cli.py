"""The console script as a user runs it."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from datetime import datetime
from decimal import Decimal
from pathlib import Path

import pytest

from streams.settings import StreamSettings
from streams.store.store_views import connect_store
from tests.conftest import read_topic
from tests.test_schemas import VALID

ROOT = Path(__file__).resolve().parent.parent


def pagellm(
    *args: str,
    stdin: bytes | None = None,
    timeout_s: float = 120,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "pagellm", *args],
        input=stdin,
        capture_output=True,
        cwd=ROOT,
        timeout=timeout_s,
        check=False,
        env=os.environ | (env or {}),
    )


def cluster_flags(settings: StreamSettings) -> list[str]:
    """The flags that point a command at this test's broker and topics."""
    return [
        "--bootstrap",
        settings.kafka_bootstrap,
        "--topic",
        settings.events_topic,
        "--catalogue-topic",
        settings.catalogue_topic,
    ]


def table_cells(printed: str) -> list[list[str]]:
    """The header and body rows of a table as `store sql` prints it (Rich's box drawing, or its
    ASCII fallback), each row as its stripped cells."""
    return [
        [cell.strip() for cell in line[1:-1].split(line[0])]
        for line in (raw.strip() for raw in printed.splitlines())
        if line[:1] in ("┃", "│", "|") and set(line) - set("|+-")  # not ASCII's rule line
    ]


@pytest.mark.kafka
def test_produce_reports_bad_lines_and_sends_the_good(
    settings: StreamSettings, tmp_path: Path
) -> None:
    feed = tmp_path / "feed.jsonl"
    lines = [
        json.dumps(VALID["click"]),
        json.dumps({**VALID["rating"], "rating": 9}),
        "",
        json.dumps(VALID["rating"]),
    ]
    feed.write_text("\n".join(lines) + "\n")
    result = pagellm("produce", str(feed), *cluster_flags(settings))
    err = result.stderr.decode()
    assert result.returncode == 1, err
    assert "line 2" in err and "rating: Input should be less than or equal to 5" in err
    assert "sent 2" in err

    got = read_topic(settings, settings.events_topic, 2)
    assert sorted(json.loads(r.value)["type"] for r in got) == ["click", "rating"]
    assert {r.key for r in got} == {b"u-1"}


@pytest.mark.kafka
def test_delist_sends_a_tombstone_keyed_by_each_item(settings: StreamSettings) -> None:
    refused = pagellm("delist", "i-1", "not an id", *cluster_flags(settings))
    assert refused.returncode == 2
    assert "item 'not an id': key: a catalogue deletion's key must be an item_id" in (
        refused.stderr.decode()
    )
    sent = pagellm("delist", "i-1", "i-2", *cluster_flags(settings))
    assert sent.returncode == 0, sent.stderr.decode()
    got = read_topic(settings, settings.catalogue_topic, 2)  # all it holds: none refused
    assert sorted((r.key, r.value) for r in got) == [(b"i-1", None), (b"i-2", None)]


def test_feed_writes_valid_jsonl_and_store_sql_reads(tmp_path: Path) -> None:
    result = pagellm("feed", "--events", "25")
    assert result.returncode == 0
    assert len(result.stdout.splitlines()) == 25

    store = tmp_path / "store"
    assert pagellm("store", "init", "--store", str(store)).returncode == 0
    assert (store / "catalog.duckdb").exists()
    query = pagellm("store", "sql", "--store", str(store), "SELECT count(*) AS n FROM events")
    assert query.returncode == 0, query.stderr.decode()
    # A fresh store holds no events: exactly one row, n = 0 (not merely a "0" somewhere).
    assert table_cells(query.stdout.decode()) == [["n"], ["0"]]
    missing = pagellm("store", "sql", "--store", str(tmp_path / "none"), "SELECT 1")
    assert missing.returncode != 0
    assert "no event store" in missing.stderr.decode()


@pytest.mark.kafka
def test_worker_refuses_a_store_fed_by_another_topic_incarnation(
    settings: StreamSettings,
) -> None:
    (settings.store_dir / "sources.json").write_text(
        json.dumps({settings.events_topic: "an-older-topic-id"})
    )
    result = pagellm(
        "worker",
        "--bootstrap",
        settings.kafka_bootstrap,
        "--topic",
        settings.events_topic,
        "--store",
        str(settings.store_dir),
    )
    assert result.returncode == 2
    err = " ".join(result.stderr.decode().split())
    assert "worker not started" in err and "an-older-topic-id" in err


@pytest.mark.kafka
def test_worker_refuses_a_missing_topic(settings: StreamSettings) -> None:
    result = pagellm(
        "worker",
        "--bootstrap",
        settings.kafka_bootstrap,
        "--topic",
        "no-such-topic",
        "--store",
        str(settings.store_dir),
    )
    assert result.returncode == 2
    assert "no-such-topic" in result.stderr.decode()


@pytest.mark.kafka
def test_produce_to_a_missing_topic_fails_fast_and_says_so(
    settings: StreamSettings, tmp_path: Path
) -> None:
    feed = tmp_path / "feed.jsonl"
    feed.write_text(json.dumps(VALID["click"]) + "\n")
    result = pagellm(
        "produce", str(feed), "--bootstrap", settings.kafka_bootstrap, "--topic", "no-such-topic"
    )
    assert result.returncode == 2
    assert "cannot produce" in result.stderr.decode()
    assert "no-such-topic" in result.stderr.decode()


def test_snapshot_create_and_show(tmp_path: Path) -> None:
    store = tmp_path / "store"
    assert pagellm("store", "init", "--store", str(store)).returncode == 0
    created = pagellm("snapshot", "create", "--store", str(store))
    assert created.returncode == 0, created.stderr.decode()
    snapshot_id = created.stderr.decode().split()[1].rstrip(":")
    shown = pagellm("snapshot", "show", "--store", str(store), snapshot_id)
    assert shown.returncode == 0 and "users with a split" in shown.stdout.decode()
    unknown = pagellm("snapshot", "show", "--store", str(store), "nope")
    assert unknown.returncode == 2 and snapshot_id in unknown.stderr.decode()


def test_invalid_settings_name_the_field(tmp_path: Path) -> None:
    store = str(tmp_path / "store")
    assert pagellm("store", "init", "--store", store).returncode == 0
    bad_flag = pagellm("snapshot", "create", "--store", store, "--category-cap", "1.5")
    assert bad_flag.returncode == 2
    assert "invalid setting: category_cap: Input should be less than or equal to 1" in (
        bad_flag.stderr.decode()
    )
    custom = pagellm("snapshot", "create", "--store", store, "--prompt-length", "5")
    default = pagellm("snapshot", "create", "--store", store)
    # The settings are part of a snapshot's identity.
    assert custom.stderr.split()[1] != default.stderr.split()[1]


def test_store_sql_writes_csv_and_json_for_scripts(tmp_path: Path) -> None:
    from tests.test_ab_metrics_sql import write_toy_store

    store = write_toy_store(tmp_path / "store")
    query = "SELECT event_id, user_id, gmv, ts, request_id FROM purchases ORDER BY event_id"
    expected = connect_store(store.root).execute(query).fetchall()
    as_csv = pagellm("store", "sql", "--store", str(store.root), "--format", "csv", query)
    assert as_csv.returncode == 0, as_csv.stderr.decode()
    rows = list(csv.DictReader(io.StringIO(as_csv.stdout.decode())))
    assert [r["event_id"] for r in rows] == [e[0] for e in expected]
    assert [Decimal(r["gmv"]) for r in rows] == [e[2] for e in expected]  # exact decimals
    assert [datetime.fromisoformat(r["ts"]) for r in rows] == [e[3] for e in expected]
    as_json = pagellm("store", "sql", "--store", str(store.root), "--format", "json", query + ";")
    assert as_json.returncode == 0, as_json.stderr.decode()
    objects = json.loads(as_json.stdout)
    assert [(o["event_id"], o["user_id"], o["request_id"]) for o in objects] == [
        (e[0], e[1], e[4]) for e in expected
    ]  # request_id is null here: JSON null, not ""
    assert all(o["request_id"] is None for o in objects) and len(objects) == len(expected) > 1
    bad = pagellm("store", "sql", "--store", str(store.root), "--format", "csv", "SELECT nope")
    assert bad.returncode == 2 and "query failed" in bad.stderr.decode() and not bad.stdout


def test_store_sql_appends_to_a_redirected_file_and_writes_strict_json(tmp_path: Path) -> None:
    from tests.test_ab_metrics_sql import write_toy_store

    store = write_toy_store(tmp_path / "store")
    out = tmp_path / "out.txt"
    out.write_bytes(b"kept\n")
    # A trailing comment once swallowed the ")" of the COPY the query was pasted into.
    query = "SELECT 'nan'::DOUBLE AS x, 'inf'::DOUBLE AS y, 1.5 AS z; -- a note"
    for fmt in ("csv", "json"):
        with out.open("ab") as sink:  # what `>> out.txt` gives the command
            done = subprocess.run(
                [sys.executable, "-m", "pagellm", "store", "sql", "--store", str(store.root),
                 "--format", fmt, query],
                stdout=sink, stderr=subprocess.PIPE, cwd=ROOT, timeout=120, check=False,
            )  # fmt: skip
        assert done.returncode == 0, done.stderr.decode()
    kept, header, row, as_json = out.read_text().split("\n", 3)
    assert (kept, header, row.lower()) == ("kept", "x,y,z", "nan,inf,1.5")
    assert json.loads(as_json, parse_constant=not_json) == [{"x": None, "y": None, "z": 1.5}]


def not_json(constant: str) -> None:
    """json.loads takes NaN and Infinity unless told otherwise; strict parsers refuse them."""
    raise ValueError(f"{constant} is not JSON")


@pytest.mark.kafka
def test_topics_take_min_insync_replicas_and_refuse_an_impossible_one(
    settings: StreamSettings,
) -> None:
    from kafka import KafkaAdminClient
    from kafka.admin import ConfigResource, ConfigResourceType

    common = ["--bootstrap", settings.kafka_bootstrap, "--topic", f"{settings.events_topic}-isr",
              "--catalogue-topic", f"{settings.catalogue_topic}-isr"]  # fmt: skip
    impossible = pagellm("topics", *common, "--min-insync-replicas", "2")
    assert impossible.returncode == 2
    assert "min_insync_replicas: 2 is more than the replication factor 1" in (
        impossible.stderr.decode()
    )
    made = pagellm("topics", *common, "--min-insync-replicas", "1")
    assert made.returncode == 0, made.stderr.decode()
    admin = KafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    try:
        described = admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, f"{settings.events_topic}-isr")]
        )
    finally:
        admin.close()
    # {resource type: {name: {key: {config data}}}}, only the keys set on the topic.
    (configs,) = next(iter(described.values())).values()
    assert configs["min.insync.replicas"]["value"] == "1", configs
