"""The model registry on files: atomic publishing (also under kill -9), status as a fold over
transitions, promotion and rollback, and the DuckDB views."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from datetime import UTC, datetime
from pathlib import Path

import pytest

from learner.registry import (
    ModelRegistry,
    RegistryError,
    connect_with_registry,
    fold_transitions,
)
from schemas.model_registry import GateCheck, GateResult, Transition, VersionRecord
from streams.store.event_store import EventStore
from tests.conftest import wait_for

FILES = 40


def record(**fields: object) -> VersionRecord:
    base: dict[str, object] = {
        "version": "",
        "created_at": datetime.now(UTC),
        "snapshot_id": "s1",
        "stream_position": {"events/0": 9},
        "parent": None,
        "warm_start": False,
        "settings": {},
        "metrics": {"ndcg@100": 0.2},
    }
    return VersionRecord.model_validate(base | fields)


def artifacts(root: Path) -> dict[str, Path]:
    """Two artifact directories of FILES small files each."""
    out = {}
    for name in ("policy", "reward"):
        directory = root / name
        directory.mkdir(parents=True, exist_ok=True)
        for n in range(FILES):
            (directory / f"part{n}.safetensors").write_bytes(os.urandom(256))
        out[name] = directory
    return out


def test_publish_numbers_versions_and_keeps_the_artifacts(tmp_path: Path) -> None:
    registry = ModelRegistry(tmp_path / "registry")
    sources = artifacts(tmp_path / "run")
    published = [registry.publish(record(), sources) for _ in range(2)]
    assert [v.version for v in published] == ["v1", "v2"]
    assert [v.version for v in registry.versions()] == ["v1", "v2"]
    for name, source in sources.items():
        copy = registry.model_dir("v2") / name
        assert sorted(p.name for p in copy.iterdir()) == sorted(p.name for p in source.iterdir())
    assert registry.state().candidate == "v2" and registry.state().production is None
    with pytest.raises(RegistryError, match=r"version: no 'v9' in .*known: v1, v2"):
        registry.record("v9")


def test_concurrent_publishers_never_share_a_number(tmp_path: Path) -> None:
    sources = artifacts(tmp_path / "run")
    registries = [ModelRegistry(tmp_path / "registry") for _ in range(4)]
    threads = [
        threading.Thread(target=lambda r=r: [r.publish(record(), sources) for _ in range(5)])
        for r in registries
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [v.version for v in registries[0].versions()] == [f"v{n}" for n in range(1, 21)]


def test_promote_retires_the_old_production_and_rollback_restores_it(tmp_path: Path) -> None:
    registry = ModelRegistry(tmp_path / "registry")
    sources = artifacts(tmp_path / "run")
    for _ in range(3):
        registry.publish(record(), sources)
    with pytest.raises(RegistryError, match="no production version"):
        registry.rollback("nothing yet")
    registry.promote("v1", "first")
    with pytest.raises(RegistryError, match="v1 is the first production version"):
        registry.rollback("too far")
    registry.promote("v2", "better")
    registry.promote("candidate", "the newest candidate")
    state = registry.state()
    assert state.production == "v3" and state.candidate is None
    assert state.status == {"v1": "retired", "v2": "retired", "v3": "production"}

    back = registry.rollback("v3 broke checkout", actor="cli:test")
    assert back.version == "v2" and back.changes == {"v3": "retired", "v2": "production"}
    assert registry.resolve("production") == "v2"
    assert registry.rollback("again").version == "v1"  # one step further back each time
    assert registry.state().status == {"v1": "production", "v2": "retired", "v3": "retired"}
    with pytest.raises(RegistryError, match="v1 is already production"):
        registry.promote("v1", "again")


def test_a_version_the_gates_refused_needs_force(tmp_path: Path) -> None:
    registry = ModelRegistry(tmp_path / "registry")
    check = GateCheck(
        name="ndcg@100",
        candidate=0.1,
        reference=0.2,
        threshold=0.19,
        passed=False,
        detail="ndcg@100 0.1000 < 0.1900 (production 0.2000)",
    )
    refused = GateResult(passed=False, checks=(check,), compared_with="v1", held_out_users=10)
    registry.publish(record(gate=refused), artifacts(tmp_path / "run"))
    with pytest.raises(RegistryError, match=r"did not pass its gates \(ndcg@100 0.1000 < 0.19"):
        registry.promote("v1", "try")
    assert registry.promote("v1", "accepted by hand", force=True).reason == "accepted by hand"
    registry.publish(record(), artifacts(tmp_path / "run"))
    registry.mark_failed("v2", "NaN loss")
    with pytest.raises(RegistryError, match="v2 failed and cannot be promoted"):
        registry.promote("v2", "no")


def test_the_fold_applies_transitions_in_order() -> None:
    versions = [record(version=f"v{n}") for n in (1, 2)]
    at = datetime(2026, 1, 1, tzinfo=UTC)

    def t(seq: int, action: str, version: str, changes: dict, production: str) -> Transition:
        return Transition(
            seq=seq,
            at=at,
            action=action,
            version=version,
            changes=changes,
            production=production,
            reason="r",
            actor="a",
        )

    transitions = [
        t(3, "rollback", "v1", {"v2": "retired", "v1": "production"}, "v1"),
        t(1, "promote", "v1", {"v1": "production"}, "v1"),
        t(2, "promote", "v2", {"v2": "production", "v1": "retired"}, "v2"),
    ]
    state = fold_transitions(versions, transitions)
    assert state.production == "v1" and state.history == ["v1"]
    assert state.status == {"v1": "production", "v2": "retired"}


PUBLISH_FOREVER = """
import sys
from pathlib import Path
from learner.registry import ModelRegistry
from tests.test_model_registry import record
registry, run = ModelRegistry(sys.argv[1]), Path(sys.argv[2])
sources = {name: run / name for name in ("policy", "reward")}
while True:
    registry.publish(record(), sources)
"""


def test_kill_9_while_publishing_leaves_only_complete_versions(tmp_path: Path) -> None:
    root, run = tmp_path / "registry", tmp_path / "run"
    artifacts(run)
    registry = ModelRegistry(root)
    caught_mid_publish = 0
    for _ in range(20):  # kill at arbitrary moments until some kills land inside a publish
        before = len(registry.versions())
        proc = subprocess.Popen(
            [sys.executable, "-c", PUBLISH_FOREVER, str(root), str(run)],
            cwd=Path(__file__).parent.parent,
        )
        try:
            wait_for(lambda b=before: len(registry.versions()) >= b + 3, 60, "three publishes")
        finally:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
        caught_mid_publish += bool(list((root / "versions").glob(".staging-*")))
        if caught_mid_publish >= 2:
            break
    assert caught_mid_publish >= 2, "no kill landed inside a publish"

    versions = registry.versions()
    assert [v.version for v in versions] == [f"v{n}" for n in range(1, len(versions) + 1)]
    for v in versions:
        for name in ("policy", "reward"):
            assert len(list((registry.model_dir(v.version) / name).iterdir())) == FILES
    # The next publisher removes what the killed ones left and takes the next number.
    nxt = registry.publish(record(), {n: run / n for n in ("policy", "reward")})
    assert nxt.version == f"v{len(versions) + 1}"
    assert not list((root / "versions").glob(".staging-*"))


def test_versions_and_transitions_are_duckdb_views_beside_the_event_tables(
    tmp_path: Path,
) -> None:
    store = EventStore(tmp_path / "store")
    store.init()
    registry = ModelRegistry.for_store(store.root)
    for _ in range(2):
        registry.publish(record(), artifacts(tmp_path / "run"))
    registry.promote("v1", "first")
    registry.promote("v2", "second")
    with connect_with_registry(store.root) as con:
        rows = con.sql(
            "SELECT v.version, v.snapshot_id, v.metrics->>'ndcg@100', t.action, t.production "
            "FROM model_versions v JOIN model_transitions t USING (version) ORDER BY t.seq"
        ).fetchall()
        assert rows == [("v1", "s1", "0.2", "promote", "v1"), ("v2", "s1", "0.2", "promote", "v2")]
        assert con.execute("SELECT count(*) FROM events").fetchone() == (0,)
