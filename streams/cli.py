"""``pagellm`` subcommands of the event backbone: topics, produce, worker, store, feed."""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import logging
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING

from rich.console import Console
from rich.table import Table

from schemas import InvalidEvent, event_to_json, parse_catalogue_deletion, parse_event
from streams.derive.derived_state import DeriveConfig
from streams.progress_bars import progress_bar
from streams.settings import StreamSettings

if TYPE_CHECKING:
    from streams.store.event_store import EventStore

log = logging.getLogger(__name__)
console = Console(stderr=True, soft_wrap=True)


def settings_from(args: argparse.Namespace) -> StreamSettings:
    """Environment settings, overridden by whichever of the common flags were given."""
    overrides = {
        name: getattr(args, name)
        for name in (
            "kafka_bootstrap",
            "store_dir",
            "events_topic",
            "catalogue_topic",
            "partitions",
            "replication_factor",
            "min_insync_replicas",
            "compact_min_age_s",
            "compact_retention_s",
        )
        if getattr(args, name, None) is not None
    }
    return StreamSettings(**overrides)


def _add_common(parser: argparse.ArgumentParser, *, store: bool = False) -> None:
    parser.add_argument("--bootstrap", dest="kafka_bootstrap", help="Kafka bootstrap servers")
    parser.add_argument("--topic", dest="events_topic", help="the events topic")
    parser.add_argument("--catalogue-topic", dest="catalogue_topic", help="the catalogue topic")
    if store:
        parser.add_argument("--store", dest="store_dir", type=Path, help="event store directory")


def _store_action(
    actions: argparse._SubParsersAction,  # type: ignore[type-arg]
    name: str,
    help_text: str,
    run: Callable[[argparse.Namespace], int],
) -> argparse.ArgumentParser:
    """A sub-action of a store command, with the common flags and its handler."""
    parser = actions.add_parser(name, help=help_text)
    _add_common(parser, store=True)
    parser.set_defaults(run=run)
    return parser


def add_derive_flags(parser: argparse.ArgumentParser) -> None:
    """Flags of the derivation settings; left out, the paper's defaults apply."""
    parser.add_argument("--prompt-length", type=int, help="positives in a prompt (20)")
    parser.add_argument("--list-length", type=int, help="items in a golden list (10)")
    parser.add_argument("--category-cap", type=float, help="largest share of one category (0.4)")
    parser.add_argument("--seed", type=int, help="seed of the negative families (0)")
    parser.add_argument("--purchase-rating", type=int, help="effective rating of a purchase (5)")
    parser.add_argument("--click-rating", type=int, help="effective rating of a click (4)")
    parser.add_argument("--skip-rating", type=int, help="effective rating of a skip (2)")


def derive_config_from(args: argparse.Namespace) -> DeriveConfig:
    """DeriveConfig from the flags given (validated: a bad value names its field)."""
    from streams.derive.feedback_ratings import RatingRule

    rule = {k: getattr(args, f"{k}_rating") for k in ("purchase", "click")}
    rule["skipped"] = args.skip_rating
    settings = {
        k: getattr(args, k) for k in ("prompt_length", "list_length", "category_cap", "seed")
    }
    return DeriveConfig(
        **{k: v for k, v in settings.items() if v is not None},
        rule=RatingRule(**{k: v for k, v in rule.items() if v is not None}),
    )


def register(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    topics = commands.add_parser(
        "topics", help="create the events, dead-letter and catalogue topics"
    )
    _add_common(topics)
    topics.add_argument("--partitions", type=int, help="partitions of each topic")
    topics.add_argument(
        "--replication-factor", type=int, help="replicas of each partition (1; 3 in production)"
    )
    topics.add_argument(
        "--min-insync-replicas", type=int,
        help="replicas that must have a write before acks=all succeeds (broker's; 2 of 3)",
    )  # fmt: skip
    topics.set_defaults(run=run_topics)

    produce = commands.add_parser("produce", help="send events from a JSONL file or stdin")
    _add_common(produce)
    produce.add_argument("file", nargs="?", default="-", help="JSONL file, or - for stdin")
    produce.add_argument(
        "--raw",
        action="store_true",
        help="send lines unvalidated (the worker dead-letters bad ones)",
    )
    produce.set_defaults(run=run_produce)

    delist = commands.add_parser(
        "delist", help="take items out of the catalogue: a tombstone for each on its topic"
    )
    _add_common(delist)
    delist.add_argument("item_ids", nargs="+", metavar="ITEM_ID", help="the items to delete")
    delist.set_defaults(run=run_delist)

    worker = commands.add_parser("worker", help="run one ingest worker (faust) until stopped")
    _add_common(worker, store=True)
    worker.add_argument("--id", dest="writer_id", help="worker id used in file names")
    worker.set_defaults(run=run_worker)

    store = commands.add_parser("store", help="the event store: init, query with SQL, compact")
    store_actions = store.add_subparsers(dest="action", required=True, metavar="ACTION")
    _store_action(store_actions, "init", "create the layout and the DuckDB catalog", run_store_init)
    sql = _store_action(store_actions, "sql", "run SQL over the analyst views", run_store_sql)
    sql.add_argument("query", help='e.g. "SELECT type, count(*) FROM events GROUP BY 1"')
    sql.add_argument(
        "--format", choices=["table", "csv", "json"], default="table",
        help="table (for people, the default), csv with a header, or json (an array of "
             "objects; NaN and infinities as null): csv and json come from DuckDB's own "
             "writers, for scripts",
    )  # fmt: skip

    compact = _store_action(
        store_actions,
        "compact",
        "merge the ledger's small files into large ones per event date; delete merged ones",
        run_store_compact,
    )
    compact.add_argument(
        "--min-age",
        dest="compact_min_age_s",
        type=float,
        help="merge fresh files at least this many seconds old (PAGELLM_COMPACT_MIN_AGE_S, 300)",
    )
    compact.add_argument(
        "--retention",
        dest="compact_retention_s",
        type=float,
        help="delete merged files this many seconds after the last view that read them "
        "(PAGELLM_COMPACT_RETENTION_S, 3600)",
    )
    compact.add_argument(
        "--every", type=float, metavar="SECONDS", help="run again every SECONDS until stopped",
    )  # fmt: skip

    imp = commands.add_parser(
        "import", help="replay a ratings dataset through Kafka as rating events"
    )
    _add_common(imp)
    imp.add_argument("path", type=Path, help="the file (or the MovieLens 100k directory)")
    imp.add_argument("--format", choices=["generic", "movielens", "amazon"], default="generic")
    imp.add_argument("--meta", type=Path, help="Amazon metadata JSON lines (categories)")
    imp.add_argument("--show-bad", type=int, default=20, help="bad rows to list (all counted)")
    imp.set_defaults(run=run_import)

    derive = commands.add_parser("derive", help="keep the training data live in the store")
    _add_common(derive, store=True)
    derive.add_argument("--interval", type=float, default=1.0, help="seconds between polls")
    derive.add_argument(
        "--refresh-every",
        type=float,
        default=60.0,
        help="seconds between rebuilds of users whose tie-breaks went stale",
    )
    add_derive_flags(derive)
    derive.set_defaults(run=run_derive)

    snapshot = commands.add_parser("snapshot", help="training-data snapshots for the learner")
    snapshot_actions = snapshot.add_subparsers(dest="action", required=True, metavar="ACTION")
    create = _store_action(snapshot_actions, "create", "pin the store's files", run_snapshot)
    add_derive_flags(create)
    show = _store_action(snapshot_actions, "show", "derive a snapshot, summarise it", run_snapshot)
    show.add_argument("snapshot_id")

    feed = commands.add_parser("feed", help="write a generated feed of events as JSONL")
    feed.add_argument("--events", type=int, default=10_000)
    feed.add_argument("--users", type=int, default=1000)
    feed.add_argument("--seed", type=int, default=7)
    feed.add_argument("--out", type=Path, help="file to write (default stdout)")
    feed.set_defaults(run=run_feed)


def run_topics(args: argparse.Namespace) -> int:
    from streams.ingest.topics import ensure_topics

    settings = settings_from(args)
    ensure_topics(settings)
    console.print(
        f"topics ready: {settings.events_topic}, {settings.dead_letter_topic}, "
        f"{settings.catalogue_topic} on {settings.kafka_bootstrap}"
    )
    return 0


def _lines(file: str) -> Iterator[tuple[int, bytes]]:
    stream: IO[bytes] = sys.stdin.buffer if file == "-" else open(file, "rb")  # noqa: SIM115
    try:
        for number, line in enumerate(stream, start=1):
            if line.strip():
                yield number, line.rstrip(b"\r\n")
    finally:
        if stream is not sys.stdin.buffer:
            stream.close()


def _key_of(raw: bytes) -> bytes | None:
    try:
        user = json.loads(raw).get("user_id")
    except (ValueError, AttributeError):
        return None
    return str(user).encode() if user is not None else None


def missing_topic(settings: StreamSettings, *topics: str) -> str | None:
    """The error for the first of ``topics`` the cluster lacks (None if all exist)."""
    from streams.ingest.topics import topic_id

    for topic in topics:
        try:
            topic_id(settings.kafka_bootstrap, topic)
        except LookupError as exc:
            return str(exc)
    return None


def run_produce(args: argparse.Namespace) -> int:
    from streams.ingest.producer import EventProducer

    settings = settings_from(args)
    if problem := missing_topic(settings, settings.events_topic):
        console.print(f"[red]cannot produce:[/red] {problem}")
        return 2
    invalid = 0
    total = None if args.file == "-" else sum(1 for _ in _lines(args.file))
    with (
        EventProducer(settings.kafka_bootstrap, settings.events_topic) as producer,
        progress_bar(console) as progress,
    ):
        task = progress.add_task("producing", total=total)
        for number, line in _lines(args.file):
            progress.advance(task)
            if args.raw:
                producer.send_raw(_key_of(line), line)
                continue
            try:
                event = parse_event(line)
            except InvalidEvent as exc:
                invalid += 1
                console.print(f"[red]line {number}[/red]: {exc.reason}")
                continue
            producer.send_raw(event.user_id.encode(), event_to_json(event))
    report = producer.report
    console.print(
        f"sent {report.sent}, failed {report.failed}, invalid lines skipped {invalid} "
        f"-> {settings.events_topic}"
    )
    return 1 if report.failed or invalid else 0


def run_delist(args: argparse.Namespace) -> int:
    """Kafka's delete for each item: a null value keyed by its id on the catalogue topic."""
    from streams.ingest.producer import EventProducer

    for item_id in args.item_ids:
        try:
            parse_catalogue_deletion(item_id.encode())
        except InvalidEvent as exc:
            console.print(f"item {item_id!r}: {exc.reason}; nothing sent", markup=False)
            return 2
    settings = settings_from(args)
    if problem := missing_topic(settings, settings.catalogue_topic):
        console.print(f"[red]cannot delist:[/red] {problem}")
        return 2
    with EventProducer(settings.kafka_bootstrap, settings.catalogue_topic) as producer:
        for item_id in args.item_ids:
            producer.send_raw(item_id.encode(), None)
    report = producer.report
    console.print(f"deleted {report.sent}, failed {report.failed} -> {settings.catalogue_topic}")
    return 1 if report.failed else 0


def run_worker(args: argparse.Namespace) -> int:
    import faust

    from streams.ingest.ingest_worker import build_app
    from streams.store.event_store import SourceMismatch

    settings = settings_from(args)
    if settings.event_loop == "uvloop":
        import mode.loop

        mode.loop.use("uvloop")  # before the app exists: it takes the loop policy in force
    try:
        app = build_app(settings, writer_id=args.writer_id)
    except (SourceMismatch, LookupError) as exc:
        console.print(f"[red]worker not started:[/red] {exc}")
        return 2
    log.info(
        "ingest worker: %s -> %s (group %s)",
        settings.events_topic,
        settings.store_dir,
        settings.consumer_group,
    )
    quiet = {"level": "WARNING"}  # connection chatter of the client libraries
    worker = faust.Worker(
        app,
        loglevel="INFO",
        redirect_stdouts=False,
        quiet=True,
        logging_config={
            "merge": True,
            "disable_existing_loggers": False,
            "loggers": {name: quiet for name in ("faust", "mode", "aiokafka", "kafka")},
        },
    )
    worker.execute_from_commandline()
    return 0


def run_store_init(args: argparse.Namespace) -> int:
    from streams.store.event_store import EventStore
    from streams.store.store_views import write_catalog

    store = EventStore(settings_from(args).store_dir)
    store.init()
    console.print(f"event store ready at {store.root}; catalog: {write_catalog(store)}")
    return 0


def run_store_compact(args: argparse.Namespace) -> int:
    from streams.store.event_store import EventStore

    settings = settings_from(args)
    store = EventStore(settings.store_dir)
    if not store.ledger_dir.exists():
        console.print(f"no event store at {store.root}; nothing to compact", style="red")
        return 2
    with contextlib.suppress(KeyboardInterrupt):
        while True:
            compact_and_purge(store, settings)
            if args.every is None:
                return 0
            time.sleep(args.every)
    return 0


def compact_and_purge(store: EventStore, settings: StreamSettings) -> None:
    """Merge every fresh file old enough, in rounds of ``compact_max_files`` per dataset, then
    delete what the retention allows; rewrite the catalog if anything changed."""
    from streams.store.compactor import compact, purge
    from streams.store.store_views import write_catalog

    changed, more = False, True
    while more:
        merged = compact(
            store,
            settings.compact_min_age_s,
            settings.compact_target_mb << 20,
            settings.compact_max_files,
        )
        changed, more = changed or merged.fresh_files > 0, merged.more_waiting
        console.print(
            f"compaction version {merged.version}: {merged.fresh_files} fresh and "
            f"{merged.merged_files} compacted files merged into {merged.written_files} "
            f"({merged.rows:,} rows) in {merged.seconds:.1f} s"
            + ("; more fresh files wait for the next round" if more else "")
        )
    purged = purge(store, settings.compact_retention_s)
    console.print(
        f"{purged.deleted} merged files deleted; views of versions before "
        f"{purged.readable_from} refuse to run"
    )
    if changed or purged.deleted:
        write_catalog(store)  # the CLI's views name the files of the new version


def run_store_sql(args: argparse.Namespace) -> int:
    import duckdb

    from streams.store.query_output import write_result
    from streams.store.store_views import connect_store

    try:
        con = connect_store(settings_from(args).store_dir)
        if args.format == "table":
            print_query(con, args.query)
        else:
            sys.stdout.flush()
            write_result(con, args.query, args.format, sys.stdout.buffer)
            sys.stdout.buffer.flush()
    except (FileNotFoundError, ValueError, duckdb.Error) as exc:
        console.print(f"query failed: {exc}", style="red", markup=False)
        return 2
    return 0


def print_query(con: object, query: str, title: str | None = None) -> None:
    """Run ``query`` on a DuckDB connection and print the result as a table."""
    cursor = con.execute(query)  # type: ignore[attr-defined]
    table = Table(title=title or query, title_justify="left")
    for column in cursor.description:
        table.add_column(column[0])
    for row in cursor.fetchall():
        table.add_row(*("" if v is None else str(v) for v in row))
    Console().print(table)


def run_import(args: argparse.Namespace) -> int:
    from streams.ingest.dataset_import import BadRow, DatasetReader
    from streams.ingest.producer import EventProducer

    settings = settings_from(args)
    if problem := missing_topic(settings, settings.events_topic, settings.catalogue_topic):
        console.print(f"[red]cannot import:[/red] {problem}")
        return 2
    reader = DatasetReader(args.format, args.path, args.meta)
    bad: list[BadRow] = []
    try:
        rows_of = reader.ratings()
        first = next(rows_of, None)  # opens the files: a missing one or bad header fails here
    except (OSError, ValueError) as exc:
        console.print(f"[red]cannot import:[/red] {exc}")
        return 2
    with (
        EventProducer(settings.kafka_bootstrap, settings.events_topic) as producer,
        progress_bar(console) as progress,
    ):
        task = progress.add_task(f"importing {args.path.name}", total=None)
        rows = 0
        for row in itertools.chain([first] if first else [], rows_of):
            rows += 1
            if isinstance(row, BadRow):
                bad.append(row)
                if len(bad) <= args.show_bad:
                    console.print(f"[yellow]bad row[/yellow] {row}")
            else:
                producer.send(row.event)
            if rows % 1000 == 0:
                progress.update(task, completed=rows)
        progress.update(task, completed=rows)
    with EventProducer(settings.kafka_bootstrap, settings.catalogue_topic) as catalogue:
        for item in reader.catalogue.values():
            catalogue.send_raw(item.item_id.encode(), item.model_dump_json().encode())
    if len(bad) > args.show_bad:
        console.print(f"... and {len(bad) - args.show_bad} more bad rows")
    console.print(
        f"imported {producer.report.sent} ratings ({producer.report.failed} failed) into "
        f"{settings.events_topic}, {catalogue.report.sent} catalogue items into "
        f"{settings.catalogue_topic}; {len(bad)} bad rows skipped"
    )
    return 1 if producer.report.failed or catalogue.report.failed else 0


def run_derive(args: argparse.Namespace) -> int:
    from streams.derive.derive_worker import DeriveWorker
    from streams.store.event_store import EventStore

    store = EventStore(settings_from(args).store_dir)
    if not store.ledger_dir.exists():
        console.print(f"[red]no event store at {store.root}[/red]; start an ingest worker first")
        return 2
    log.info("derive worker on %s, polling every %.1f s", store.root, args.interval)
    with contextlib.suppress(KeyboardInterrupt):
        DeriveWorker(store, derive_config_from(args)).run(args.interval, args.refresh_every)
    return 0


def run_snapshot(args: argparse.Namespace) -> int:
    from streams.derive.snapshot_store import SnapshotError, create_snapshot, load_snapshot
    from streams.store.event_store import EventStore

    store = EventStore(settings_from(args).store_dir)
    if args.action == "create":
        manifest = create_snapshot(store, derive_config_from(args))
        console.print(
            f"snapshot {manifest.snapshot_id}: {manifest.rows} ledger rows, "
            f"stream position {manifest.stream_position}"
        )
        return 0
    try:
        manifest, snap = load_snapshot(store, args.snapshot_id)
    except SnapshotError as exc:
        console.print(f"[red]{exc}[/red]")
        return 2
    table = Table(title=f"snapshot {manifest.snapshot_id} ({manifest.created_at})")
    table.add_column("what")
    table.add_column("count", justify="right")
    rows = [
        ("catalogue items", len(snap.catalogue)),
        ("users with a split", len(snap.golden)),
        ("users left out (< 3 positives)", snap.users_left_out),
        ("golden lists with the cap relaxed", sum(g.cap_relaxed for g in snap.golden.values())),
        *((f"pairs {family}", len(pairs)) for family, pairs in sorted(snap.pairs.items())),
        *(
            (f"skipped {family}: {reason}", n)
            for (family, reason), n in sorted(snap.skipped.items())
        ),
    ]
    for what, count in rows:
        table.add_row(what, str(count))
    Console().print(table)
    return 0


def run_feed(args: argparse.Namespace) -> int:
    from streams.ingest.synthetic_feed import FeedConfig, FeedGenerator

    generator = FeedGenerator(FeedConfig(users=args.users, seed=args.seed))
    out: IO[bytes] = open(args.out, "wb") if args.out else sys.stdout.buffer  # noqa: SIM115
    try:
        for event in generator.events(args.events):
            out.write(event_to_json(event) + b"\n")
    finally:
        if args.out:
            out.close()
    return 0
