"""``pagellm registry list | show | promote | rollback | sql``: the model registry by hand."""

from __future__ import annotations

import argparse
import json
import os
from typing import TYPE_CHECKING

from rich.console import Console
from rich.table import Table

from learner.command_options import CommandError, add_store_flag, refusing, store_dir_from

if TYPE_CHECKING:
    from learner.registry import ModelRegistry

console = Console(stderr=True, soft_wrap=True)
out = Console(soft_wrap=True)
PRODUCTION = "production_"  # prefix of production's figures in a version's metrics


def register(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    registry = commands.add_parser("registry", help="model versions, their status and lineage")
    actions = registry.add_subparsers(dest="action", required=True, metavar="ACTION")

    listing = actions.add_parser("list", help="every version with its status and figures")
    listing.add_argument("--json", action="store_true", help="one JSON object per line")
    listing.set_defaults(run=refusing(console, run_list, "registry list"))

    show = actions.add_parser("show", help="one version: lineage, figures, gates, history")
    show.add_argument("version", help="v<N>, 'production' or 'candidate'")
    show.add_argument("--json", action="store_true", help="one JSON document")
    show.set_defaults(run=refusing(console, run_show, "registry show"))

    promote = actions.add_parser("promote", help="make a version production")
    promote.add_argument("version", help="v<N> or 'candidate'")
    promote.add_argument("--reason", required=True, help="why (recorded)")
    promote.add_argument("--force", action="store_true", help="even if its gates refused it")
    promote.set_defaults(run=refusing(console, run_promote, "registry promote"))

    rollback = actions.add_parser("rollback", help="production back to the one before it")
    rollback.add_argument("--reason", required=True, help="why (recorded)")
    rollback.set_defaults(run=refusing(console, run_rollback, "registry rollback"))

    sql = actions.add_parser("sql", help="a DuckDB query over the registry's and the store's views")
    sql.add_argument("query")
    sql.add_argument("--json", action="store_true", help="rows as JSON objects, one per line")
    sql.set_defaults(run=refusing(console, run_sql, "registry sql"))

    for parser in (listing, show, promote, rollback, sql):
        add_store_flag(parser)


def _registry(args: argparse.Namespace) -> ModelRegistry:
    from learner.registry import ModelRegistry

    return ModelRegistry.for_store(store_dir_from(args))


def _actor() -> str:
    return f"cli:{os.environ.get('USER', 'unknown')}"


def run_list(args: argparse.Namespace) -> int:
    registry = _registry(args)
    state = registry.state()
    versions = registry.versions()
    if args.json:
        for v in versions:
            print(
                json.dumps(
                    {
                        "version": v.version,
                        "status": state.status[v.version],
                        "created_at": v.created_at.isoformat(),
                        "snapshot_id": v.snapshot_id,
                        "parent": v.parent,
                        "metrics": v.metrics,
                        "gate_passed": v.gate.passed if v.gate else None,
                    }
                )
            )
        return 0
    if not versions:
        console.print(f"no versions in {registry.root}")
        return 0
    aliases = {state.production: " (production)", state.candidate: " (candidate)"}
    table = Table(title=f"model versions in {registry.root}")
    for column in ("version", "status", "created (UTC)", "parent", "NDCG@100", "gate"):
        table.add_column(column)
    for v in reversed(versions):
        table.add_row(
            v.version,
            state.status[v.version]
            + aliases.get(v.version, "").replace(f" ({state.status[v.version]})", ""),
            f"{v.created_at:%m-%d %H:%M:%S}",
            (v.parent or "-") + (" warm" if v.warm_start else ""),
            f"{v.metrics.get('ndcg@100', float('nan')):.4f}",
            ("passed" if v.gate.passed else "refused") if v.gate else "",
        )
    out.print(table)
    return 0


def _resolve(registry: ModelRegistry, name: str) -> str:
    from learner.registry import RegistryError

    try:
        return registry.resolve(name)
    except RegistryError as exc:
        raise CommandError(str(exc)) from exc


def run_show(args: argparse.Namespace) -> int:
    registry = _registry(args)
    version = _resolve(registry, args.version)
    record, state = registry.record(version), registry.state()
    history = [t for t in registry.transitions() if version in t.changes]
    if args.json:
        doc = record.model_dump(mode="json") | {
            "status": state.status[version],
            "gate_reason": record.gate.reason if record.gate else None,
            "transitions": [t.model_dump(mode="json") for t in history],
            "model_dir": str(registry.model_dir(version)),
        }
        print(json.dumps(doc, indent=1))
        return 0
    out.print(f"[bold]{version}[/bold]: {state.status[version]}, created {record.created_at}")
    out.print(f"snapshot {record.snapshot_id} at stream position {record.stream_position}")
    out.print(
        f"parent {record.parent or 'none'} ({'warm start' if record.warm_start else 'full'}),"
        f" retrain {record.retrain_id}, model in {registry.model_dir(version)}"
    )
    figures = Table(title="figures on the snapshot's held-out users")
    for column in ("figure", version, record.gate.compared_with if record.gate else ""):
        figures.add_column(column or "production", justify="right")
    for name, value in sorted(record.metrics.items()):
        if not name.startswith(PRODUCTION):
            figures.add_row(name, f"{value:.4f}", _number(record.metrics.get(PRODUCTION + name)))
    out.print(figures)
    if record.gate is not None:
        gates = Table(
            title=f"gates: {'passed' if record.gate.passed else 'refused'} "
            f"({record.gate.held_out_users} users, against "
            f"{record.gate.compared_with or 'no production version'})"
        )
        for column in ("gate", "candidate", "production / bound", "threshold", "passed"):
            gates.add_column(column)
        for c in record.gate.checks:
            gates.add_row(
                c.name,
                _number(c.candidate),
                _number(c.reference),
                _number(c.threshold),
                "yes" if c.passed else "NO",
            )
        out.print(gates)
        out.print(f"gate: {record.gate.reason}", markup=False)
    for t in history:
        out.print(
            f"{t.at:%Y-%m-%d %H:%M:%S} {t.action} by {t.actor}: {t.changes} ({t.reason})",
            markup=False,
        )
    return 0


def _number(value: float | None) -> str:
    return "" if value is None else f"{value:.4f}"


def run_promote(args: argparse.Namespace) -> int:
    from learner.registry import RegistryError

    registry = _registry(args)
    try:
        transition = registry.promote(args.version, args.reason, _actor(), force=args.force)
    except RegistryError as exc:
        raise CommandError(str(exc)) from exc
    console.print(f"{transition.version} is production: {transition.changes}")
    return 0


def run_rollback(args: argparse.Namespace) -> int:
    from learner.registry import RegistryError

    registry = _registry(args)
    try:
        transition = registry.rollback(args.reason, _actor())
    except RegistryError as exc:
        raise CommandError(str(exc)) from exc
    console.print(f"rolled back: {transition.version} is production again: {transition.changes}")
    return 0


def run_sql(args: argparse.Namespace) -> int:
    import duckdb

    from learner.registry import connect_with_registry

    with connect_with_registry(store_dir_from(args)) as con:
        try:
            result = con.sql(args.query)
        except duckdb.Error as exc:
            raise CommandError(f"query: {exc}") from exc
        if result is None:
            return 0
        if args.json:
            columns = result.columns
            for row in result.fetchall():
                print(json.dumps(dict(zip(columns, row, strict=True)), default=str))
        else:
            result.show()
    return 0
