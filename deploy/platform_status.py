"""``pagellm status``: every part of the platform, each read where it lives.

* broker and ingest workers: the ingest group's state, members and, per partition of the
  events topic, the committed offset against the end (the lag, in records);
* derive worker: its heartbeat (``STORE/workers/derive.json``): when it last polled and how
  many of the store's ledger files it has folded in;
* learning: the retrain loop's state and the last retrain;
* versions: the registry's production and every version still in play;
* experiments: each one's state, what its variants serve and its user rollup's last round;
* serving: the server's health, the versions it has loaded and its impression spool.

A part that cannot be reached is shown as down with the reason, never as an exception.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import httpx
from rich.console import Console
from rich.table import Table

from abtest.registry import ExperimentRegistry
from abtest.user_rollup import ExperimentRollup
from learner.loop_control import read_loop_state
from learner.registry import ModelRegistry
from learner.retrain_journal import read_retrains
from serving.server import read_state
from streams.derive.derive_worker import WORKERS_DIR
from streams.ingest.worker_process import process_alive
from streams.settings import StreamSettings
from streams.store.compactor import CompactionStatus, compaction_status
from streams.store.event_store import EventStore

KAFKA_TIMEOUT_MS = 5000


@dataclass
class PartitionLag:
    partition: int
    committed: int | None  # None: the group has committed nothing for it yet
    end: int

    @property
    def lag(self) -> int:
        """end - committed (the whole partition when nothing is committed)."""
        return self.end - (self.committed or 0)


@dataclass
class IngestStatus:
    group: str
    state: str
    members: int
    partitions: list[PartitionLag]


@dataclass
class DeriveStatus:
    polled_at: datetime
    alive: bool
    files_folded: int
    ledger_files: int


@dataclass
class PlatformStatus:
    bootstrap: str
    broker: str  # "up", or why it is not
    ingest: IngestStatus | None
    derive: DeriveStatus | None
    compaction: CompactionStatus
    loop: dict[str, object] | None
    last_retrain: dict[str, object] | None
    production: str | None
    versions: dict[str, str]  # version -> status, retired and failed left out
    experiments: list[dict[str, object]]
    serving: dict[str, object] | None
    problems: list[str] = field(default_factory=list)


def ingest_status(streams: StreamSettings) -> IngestStatus:
    """The ingest group's state and its lag per partition of the events topic (Kafka)."""
    from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition
    from kafka.errors import KafkaError

    quick = {"bootstrap_servers": streams.kafka_bootstrap, "bootstrap_timeout_ms": KAFKA_TIMEOUT_MS}
    admin = KafkaAdminClient(**quick, request_timeout_ms=KAFKA_TIMEOUT_MS)
    consumer = KafkaConsumer(**quick, request_timeout_ms=KAFKA_TIMEOUT_MS + 1000)
    try:
        partitions = consumer.partitions_for_topic(streams.events_topic) or set()
        try:
            group = admin.describe_groups([streams.consumer_group])[streams.consumer_group]
            committed = admin.list_group_offsets({streams.consumer_group: None})
            offsets = committed.get(streams.consumer_group, {})
        except KafkaError as exc:  # no worker has ever joined: the group has no coordinator yet
            group, offsets = {"state": f"not found ({type(exc).__name__})"}, {}
        topic_partitions = [TopicPartition(streams.events_topic, p) for p in sorted(partitions)]
        ends = consumer.end_offsets(topic_partitions)
    finally:
        consumer.close()
        admin.close()
    lags = [
        PartitionLag(
            tp.partition, offsets[tp].offset if tp in offsets else None, int(ends.get(tp, 0))
        )
        for tp in topic_partitions
    ]
    return IngestStatus(
        streams.consumer_group,
        str(group.get("state", "unknown")),
        len(group.get("members", [])),
        lags,
    )


def derive_status(store: EventStore) -> DeriveStatus | None:
    path = store.root / WORKERS_DIR / "derive.json"
    if not path.exists():
        return None
    beat = json.loads(path.read_text())
    return DeriveStatus(
        datetime.fromisoformat(beat["polled_at"]),
        process_alive(int(beat["pid"])),
        int(beat["files_folded"]),
        len(store.ledger_files()),
    )


def rollup_status(store_dir: Path, experiment: str, now: datetime) -> dict[str, object] | None:
    """The experiment's user rollup: its users, the end of its window and its last round's
    age (None: never built; run `pagellm ab rollup`)."""
    state = ExperimentRollup(store_dir, experiment).state()
    if state is None:
        return None
    return {
        "users": state.users,
        "window_end": state.window_end.isoformat(),
        "age_s": round((now - state.built_at).total_seconds(), 1),
    }


def serving_status(run_dir: Path) -> dict[str, object] | None:
    """The running server's health and versions, or None when none was started here."""
    state = read_state(run_dir)
    if state is None:
        return None
    if not process_alive(state.pid):
        return {"url": state.url, "down": f"the server (pid {state.pid}) is not running"}
    try:
        health = httpx.get(f"{state.url}/v1/health", timeout=5).json()
        versions = httpx.get(f"{state.url}/v1/versions", timeout=5).json()
    except httpx.HTTPError as exc:
        return {"url": state.url, "down": f"{type(exc).__name__}: {exc}"}
    return {"url": state.url, "health": health, "versions": versions["versions"]}


def collect_status(streams: StreamSettings, serve_run_dir: Path) -> PlatformStatus:
    store = EventStore(streams.store_dir)
    registry = ModelRegistry.for_store(streams.store_dir)
    problems: list[str] = []
    try:
        ingest, broker = ingest_status(streams), "up"
    except Exception as exc:  # any failure to reach the broker is the answer, not a crash
        ingest, broker = None, f"unreachable: {type(exc).__name__}: {exc}"
        problems.append(f"broker at {streams.kafka_bootstrap} {broker}")
    state = registry.state()
    retrains = read_retrains(registry)
    now = datetime.now(UTC)
    experiments = [
        {
            "name": e.name,
            "state": "stopped" if e.stopped_at else ("running" if e.is_running(now) else "ended"),
            "variants": {v.name: v.model_version for v in e.variants},
            "start": e.start.isoformat(),
            "rollup": rollup_status(streams.store_dir, e.name, now),
        }
        for e in ExperimentRegistry(streams.store_dir).list()
    ]
    serving = serving_status(serve_run_dir)
    if serving is not None and "down" in serving:
        problems.append(f"serving: {serving['down']}")
    derive = derive_status(store)
    if derive is not None and not derive.alive:
        problems.append("derive worker: not running")
    return PlatformStatus(
        bootstrap=streams.kafka_bootstrap,
        broker=broker,
        ingest=ingest,
        derive=derive,
        compaction=compaction_status(store),
        loop=read_loop_state(registry),
        last_retrain=retrains[-1].model_dump(mode="json") if retrains else None,
        production=state.production,
        versions={v: s for v, s in state.status.items() if s in ("production", "candidate")},
        experiments=experiments,
        serving=serving,
        problems=problems,
    )


def as_json(status: PlatformStatus) -> str:
    doc = asdict(status)
    if status.ingest is not None:
        for lag, row in zip(status.ingest.partitions, doc["ingest"]["partitions"], strict=True):
            row["lag"] = lag.lag
    return json.dumps(doc, default=str, indent=1)


def render(status: PlatformStatus, console: Console) -> None:
    console.print(f"broker {status.bootstrap}: {status.broker}", markup=False)
    if status.ingest is not None:
        i = status.ingest
        lag = Table("partition", "committed", "end", "lag", title_justify="left",
                    title=f"ingest group {i.group}: {i.state}, {i.members} workers")  # fmt: skip
        for p in i.partitions:
            committed = "-" if p.committed is None else str(p.committed)
            lag.add_row(str(p.partition), committed, str(p.end), str(p.lag))
        console.print(lag)
    if status.derive is None:
        console.print("derive worker: has not run on this store")
    else:
        d = status.derive
        ago = (datetime.now(UTC) - d.polled_at).total_seconds()
        console.print(
            f"derive worker: {'running' if d.alive else 'NOT RUNNING'}, last poll {ago:.0f} s "
            f"ago, {d.files_folded} of {d.ledger_files} ledger files folded in "
            f"(lag {max(0, d.ledger_files - d.files_folded)} files)"
        )
    c = status.compaction
    last = (
        f"version {c.version} at {c.compacted_at:%Y-%m-%d %H:%M:%S} UTC"
        if c.compacted_at
        else "never run"
    )
    oldest = f", the oldest {c.oldest_waiting_s:.0f} s old" if c.oldest_waiting_s else ""
    console.print(
        f"compaction: {last}; {c.compacted_files} compacted files, {c.waiting_files} fresh files "
        f"waiting{oldest}, {c.awaiting_deletion} merged files awaiting deletion"
    )
    loop = status.loop
    console.print(
        "retrain loop: "
        + (f"{'running' if loop['running'] else 'not running'}, {loop['state']}" if loop else "-")
    )
    if (r := status.last_retrain) is not None:
        console.print(
            f"last retrain {r['retrain_id']} ({r['trigger']}): {r['state']}, version "
            f"{r.get('version') or '-'}, promoted {r.get('promoted')}, started {r['started_at']}",
            markup=False,
        )
    versions = ", ".join(f"{v} ({s})" for v, s in sorted(status.versions.items()))
    console.print(f"production {status.production or '-'}; in play: {versions or '-'}")
    for e in status.experiments:
        variants = ", ".join(f"{n}={v}" for n, v in e["variants"].items())  # type: ignore[attr-defined]
        rollup = e["rollup"]
        rolled = (
            "no user rollup (reports read the raw events)"
            if rollup is None
            else f"user rollup of {rollup['users']:,} users, last round {rollup['age_s']:.0f} s ago"  # type: ignore[index]
        )
        console.print(f"experiment {e['name']}: {e['state']} ({variants}); {rolled}", markup=False)
    if status.serving is None:
        console.print("serving: no server started with this run directory")
    elif "down" in status.serving:
        console.print(f"serving at {status.serving['url']}: DOWN: {status.serving['down']}")
    else:
        health, spool = status.serving["health"], status.serving["health"]["impressions"]  # type: ignore[index]
        loaded = ", ".join(
            f"{v['version']} ({'/'.join(v['serves'])})"
            for v in status.serving["versions"]  # type: ignore[attr-defined]
        )
        console.print(
            f"serving at {status.serving['url']}: {health['status']}; loaded {loaded}; "  # type: ignore[index]
            f"impression spool {spool['pending']} pending, {spool['delivered']} delivered, "
            f"{spool['dropped']} dropped",
            markup=False,
        )
    for problem in status.problems:
        console.print(f"[red]problem:[/red] {problem}", markup=True)
