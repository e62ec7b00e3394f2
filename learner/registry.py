"""The model registry: versioned policies with lineage, status and aliases, on plain files.

Layout under ROOT (by default the event store's ``registry/``, so the registry travels with
the data it was trained on)::

    versions/v<N>/version.json   the VersionRecord: snapshot, stream position, parent, settings,
                                 metrics, gate results (never changes after publishing)
    versions/v<N>/model/         vocabulary/, reference/, reward/, policy/ (transformers and
                                 safetensors files: nothing is loaded through pickle)
    transitions/<seq>.json       every change of status, append-only (promote, rollback, ...)
    retrains/<id>.json           one RetrainRecord per retrain (``learner.retrain``)

The concepts are MLflow's (versions, aliases ``production`` and ``candidate``, lineage through
the snapshot and the parent), kept on files so that DuckDB reads them beside the event tables.

Publishing is one rename: a version is assembled in ``versions/.staging-<pid>-<uuid>`` and
renamed to ``v<N>``; a rename onto an existing (never empty) version fails, which claims the
number. A process killed while publishing leaves only a staging directory, which no reader
lists and the next publisher removes. Status is a fold over the transitions: each one names
every version it moved, so a reader never needs more than the files.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import duckdb

from schemas.model_registry import Action, Status, Transition, VersionRecord
from streams.ingest.worker_process import process_alive
from streams.store.atomic_files import fsync_dir, write_synced
from streams.store.file_locks import exclusive
from streams.store.sql_literals import sql_literal
from streams.store.store_views import connect_store

VERSIONS, TRANSITIONS, RETRAINS = "versions", "transitions", "retrains"
RECORD, MODEL = "version.json", "model"
STAGING_PREFIX = ".staging-"
ALIASES = ("production", "candidate")


class RegistryError(ValueError):
    """A registry request that cannot be done; the message says why."""


def version_number(version: str) -> int:
    """v12 -> 12 (versions sort by number, not as text)."""
    if not (version.startswith("v") and version[1:].isdigit()):
        raise RegistryError(f"version: {version!r} is not of the form v<N>")
    return int(version[1:])


@dataclass
class RegistryState:
    """Status of every version, the production version and the promotions that led to it."""

    status: dict[str, Status] = field(default_factory=dict)
    production: str | None = None
    history: list[str] = field(default_factory=list)  # productions, oldest first

    @property
    def candidate(self) -> str | None:
        """The newest version still waiting as a candidate."""
        waiting = [v for v, s in self.status.items() if s == "candidate"]
        return max(waiting, key=version_number, default=None)

    def alias(self, name: str) -> str | None:
        if name not in ALIASES:
            raise RegistryError(f"alias: {name!r} is not one of {ALIASES}")
        return self.production if name == "production" else self.candidate


def fold_transitions(versions: list[VersionRecord], transitions: list[Transition]) -> RegistryState:
    """Start every version at its initial status, then apply the transitions in order."""
    state = RegistryState(status={v.version: v.initial_status for v in versions})
    for t in sorted(transitions, key=lambda t: t.seq):
        state.status.update(t.changes)
        if t.action == "promote":
            state.history.append(t.version)
        elif t.action == "rollback" and state.history:
            state.history.pop()
        state.production = t.production
    return state


def _link_or_copy(source: str, target: str) -> None:
    """Artifacts are immutable: a hard link costs nothing; across file systems, a copy."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


class ModelRegistry:
    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)

    @classmethod
    def for_store(cls, store_dir: Path | str) -> ModelRegistry:
        return cls(Path(store_dir) / "registry")

    @property
    def retrains_dir(self) -> Path:
        return self.root / RETRAINS

    # --- reading -------------------------------------------------------------------------

    def versions(self) -> list[VersionRecord]:
        """Every published version, oldest first (staging directories are never listed)."""
        directory = self.root / VERSIONS
        if not directory.exists():
            return []
        found = [p for p in directory.glob("v*") if p.name[1:].isdigit()]
        return [
            VersionRecord.model_validate_json((p / RECORD).read_text())
            for p in sorted(found, key=lambda p: version_number(p.name))
        ]

    def record(self, version: str) -> VersionRecord:
        path = self.root / VERSIONS / version / RECORD
        if not path.exists():
            known = [v.version for v in self.versions()]
            raise RegistryError(
                f"version: no {version!r} in {self.root}; known: {', '.join(known) or 'none'}"
            )
        return VersionRecord.model_validate_json(path.read_text())

    def transitions(self) -> list[Transition]:
        directory = self.root / TRANSITIONS
        if not directory.exists():
            return []
        return sorted(
            (Transition.model_validate_json(p.read_text()) for p in directory.glob("*.json")),
            key=lambda t: t.seq,
        )

    def state(self) -> RegistryState:
        return fold_transitions(self.versions(), self.transitions())

    def resolve(self, name: str) -> str:
        """A version name, or the version an alias points at."""
        if name in ALIASES:
            version = self.state().alias(name)
            if version is None:
                raise RegistryError(f"alias: no version is {name} in {self.root}")
            return version
        self.record(name)
        return name

    def model_dir(self, version: str) -> Path:
        return self.root / VERSIONS / self.resolve(version) / MODEL

    # --- publishing ----------------------------------------------------------------------

    def publish(self, record: VersionRecord, artifacts: Mapping[str, Path]) -> VersionRecord:
        """Register ``artifacts`` (name -> directory) as the next version, all or nothing.

        ``record.version`` is filled in here; the published record is returned.
        """
        versions_dir = self.root / VERSIONS
        versions_dir.mkdir(parents=True, exist_ok=True)
        self.remove_abandoned_staging()
        staging = versions_dir / f"{STAGING_PREFIX}{os.getpid()}-{uuid.uuid4().hex[:8]}"
        for name, source in artifacts.items():
            shutil.copytree(source, staging / MODEL / name, copy_function=_link_or_copy)
        number = 1 + max((version_number(v.version) for v in self.versions()), default=0)
        while True:
            published = record.model_copy(update={"version": f"v{number}"})
            write_synced(staging / RECORD, published.model_dump_json(indent=1))
            try:
                os.rename(staging, versions_dir / published.version)
            except OSError as exc:  # another publisher took the number
                if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                    raise
                number += 1
                continue
            fsync_dir(versions_dir)
            return published

    def remove_abandoned_staging(self) -> list[Path]:
        """Staging directories whose publishing process is gone (killed mid-publish)."""
        removed = []
        for path in (self.root / VERSIONS).glob(f"{STAGING_PREFIX}*"):
            pid = path.name.removeprefix(STAGING_PREFIX).split("-")[0]
            if not (pid.isdigit() and process_alive(int(pid))):
                shutil.rmtree(path, ignore_errors=True)
                removed.append(path)
        return removed

    # --- status changes ------------------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self) -> Iterator[RegistryState]:
        """The current state, with every other status change waiting until this one is done."""
        with exclusive(self.root / ".lock"):
            yield self.state()

    def _append(
        self,
        action: Action,
        version: str,
        changes: dict[str, Status],
        production: str | None,
        reason: str,
        actor: str,
    ) -> Transition:
        directory = self.root / TRANSITIONS
        directory.mkdir(parents=True, exist_ok=True)
        seq = 1 + max((t.seq for t in self.transitions()), default=0)
        transition = Transition(
            seq=seq,
            at=datetime.now(UTC),
            action=action,
            version=version,
            changes=changes,
            production=production,
            reason=reason,
            actor=actor,
        )
        tmp = directory / f".{seq:08d}-{uuid.uuid4().hex[:8]}.tmp"
        write_synced(tmp, transition.model_dump_json(indent=1))
        try:
            os.link(tmp, directory / f"{seq:08d}.json")  # fails if the number is taken
        finally:
            tmp.unlink()
        fsync_dir(directory)
        return transition

    def promote(
        self, version: str, reason: str, actor: str = "learner", force: bool = False
    ) -> Transition:
        """Make ``version`` production; the production before it is retired.

        A version the gates refused is promoted only with ``force`` (the reason is recorded).
        """
        version = self.resolve(version)
        record = self.record(version)
        with self._locked() as state:
            status = state.status[version]
            if status == "production":
                raise RegistryError(f"version: {version} is already production")
            if status == "failed":
                raise RegistryError(f"version: {version} failed and cannot be promoted")
            if record.gate is not None and not record.gate.passed and not force:
                raise RegistryError(
                    f"version: {version} did not pass its gates ({record.gate.reason}); "
                    "promote it anyway with --force and a --reason"
                )
            changes: dict[str, Status] = {version: "production"}
            if state.production is not None:
                changes[state.production] = "retired"
            return self._append("promote", version, changes, version, reason, actor)

    def rollback(self, reason: str, actor: str = "cli") -> Transition:
        """Production goes back to the version that was production before it; the rolled-back
        version is retired. Nothing is loaded or copied: it is one record."""
        with self._locked() as state:
            if state.production is None:
                raise RegistryError("rollback: there is no production version")
            earlier = [v for v in state.history[:-1] if state.status.get(v) != "failed"]
            if not earlier:
                raise RegistryError(
                    f"rollback: {state.production} is the first production version; "
                    "there is none to go back to"
                )
            restored = earlier[-1]
            changes: dict[str, Status] = {state.production: "retired", restored: "production"}
            return self._append("rollback", restored, changes, restored, reason, actor)

    def mark_failed(self, version: str, reason: str, actor: str = "learner") -> Transition:
        with self._locked() as state:
            if state.production == version:
                raise RegistryError(f"version: {version} is production; roll it back first")
            return self._append(
                "fail", version, {version: "failed"}, state.production, reason, actor
            )


def registry_views(registry: ModelRegistry) -> dict[str, str]:
    """Name -> SELECT of the registry's DuckDB views (only those whose files exist yet)."""
    root = registry.root
    views: dict[str, str] = {}
    if list((root / VERSIONS).glob(f"v*/{RECORD}")):
        views["model_versions"] = (
            f"SELECT * FROM read_json({sql_literal(f'{root}/{VERSIONS}/v*/{RECORD}')}, columns = {{"
            "version: 'VARCHAR', created_at: 'TIMESTAMPTZ', snapshot_id: 'VARCHAR', "
            "stream_position: 'JSON', parent: 'VARCHAR', retrain_id: 'VARCHAR', "
            "warm_start: 'BOOLEAN', ablation: 'VARCHAR', settings: 'JSON', metrics: 'JSON', "
            "gate: 'JSON', initial_status: 'VARCHAR'})"
        )
    if list((root / TRANSITIONS).glob("*.json")):
        views["model_transitions"] = (
            f"SELECT * FROM read_json({sql_literal(f'{root}/{TRANSITIONS}/*.json')}, columns = {{"
            "seq: 'BIGINT', \"at\": 'TIMESTAMPTZ', action: 'VARCHAR', version: 'VARCHAR', "
            "changes: 'JSON', production: 'VARCHAR', reason: 'VARCHAR', actor: 'VARCHAR'})"
        )
    if list((root / RETRAINS).glob("*.json")):
        views["retrains"] = (
            f"SELECT * FROM read_json({sql_literal(f'{root}/{RETRAINS}/*.json')}, columns = {{"
            "retrain_id: 'VARCHAR', trigger: 'VARCHAR', state: 'VARCHAR', "
            "started_at: 'TIMESTAMPTZ', finished_at: 'TIMESTAMPTZ', snapshot_id: 'VARCHAR', "
            "stream_position: 'JSON', parent: 'VARCHAR', warm_start: 'BOOLEAN', "
            "stages: 'JSON', version: 'VARCHAR', promoted: 'BOOLEAN', gate_reason: 'VARCHAR', "
            "metrics: 'JSON', error: 'VARCHAR'})"
        )
    return views


def connect_with_registry(store_dir: Path | str) -> duckdb.DuckDBPyConnection:
    """``connect_store`` plus the registry's views: model_versions, model_transitions,
    retrains, queryable beside (and joinable with) the event tables."""
    con = connect_store(store_dir)
    for name, select in registry_views(ModelRegistry.for_store(store_dir)).items():
        con.execute(f"CREATE OR REPLACE VIEW {name} AS {select}")
    return con
