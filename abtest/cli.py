"""``pagellm ab``: create, list, show, stop, reweight experiments; assign users; report.

The report's statistics and plotting (scipy, matplotlib) load only for the commands using them.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

from abtest.assignment import assign
from abtest.bucketing import BUCKETS, empty_variants, initial_allocation
from abtest.experiment import MAX_ALPHA, MAX_WEIGHT, Experiment, Variant
from abtest.metrics import METRICS, MetricName
from abtest.registry import ExperimentError, ExperimentRegistry
from schemas.events import describe_validation_error
from streams.progress_bars import progress_bar
from streams.settings import StreamSettings

# Piped output (a file, a CI log) gets room for the whole report table instead of 80 columns.
console = Console(soft_wrap=True, width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True, soft_wrap=True)
MAX_PLANNED_LIFT = 100.0  # +10,000%: beyond it the power formulas overflow, and it means nothing


def _store_dir(args: argparse.Namespace) -> Path:
    return args.store_dir or StreamSettings().store_dir


def _registry(args: argparse.Namespace) -> ExperimentRegistry:
    return ExperimentRegistry(_store_dir(args))


def parse_variant(spec: str) -> Variant:
    """NAME:MODEL_VERSION[:WEIGHT] (weight 1 when left out)."""
    parts = spec.split(":")
    if len(parts) not in (2, 3):
        raise argparse.ArgumentTypeError(
            f"--variant {spec!r}: expected NAME:MODEL_VERSION[:WEIGHT], e.g. control:v1:50"
        )
    weight = parts[2] if len(parts) == 3 else "1"
    try:
        return Variant.model_validate(
            {"name": parts[0], "model_version": parts[1], "weight": weight}
        )
    except ValidationError as exc:  # argparse would say only "invalid parse_variant value"
        raise argparse.ArgumentTypeError(
            f"--variant {spec!r}: {describe_validation_error(exc)}"
        ) from None


def _time(value: str) -> datetime:
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{value!r} is not an ISO-8601 time ({exc})") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _metrics(value: str) -> tuple[MetricName, ...]:
    try:
        return tuple(MetricName(v) for v in value.split(",") if v)
    except ValueError:
        known = ", ".join(m.value for m in MetricName)
        raise argparse.ArgumentTypeError(f"{value!r}: metrics are {known}") from None


def _share(value: str) -> float:
    try:
        share = float(value)
    except ValueError:
        share = math.nan
    if not 0 < share <= 1:
        raise argparse.ArgumentTypeError(f"{value!r}: expected a number in (0, 1]")
    return share


def _weights(value: str) -> dict[str, float]:
    """'50,50' -> control 50, treatment 50; more than two: treatment-1, treatment-2, ..."""
    try:
        numbers = [float(w) for w in value.split(",")]
    except ValueError:
        numbers = []
    if len(numbers) < 2 or any(not 0 < w <= MAX_WEIGHT for w in numbers):
        raise argparse.ArgumentTypeError(
            f"{value!r}: expected two or more positive weights up to {MAX_WEIGHT:g}, control "
            "first, e.g. 50,50"
        )
    treatments = ["treatment"] if len(numbers) == 2 else [
        f"treatment-{i}" for i in range(1, len(numbers))
    ]  # fmt: skip
    weights = dict(zip(["control", *treatments], numbers, strict=True))
    if empty := empty_variants(initial_allocation(weights)):
        raise argparse.ArgumentTypeError(
            f"{value!r}: {', '.join(empty)} would get none of the {BUCKETS} buckets beside the "
            "others"
        )
    return weights


def register(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    ab = commands.add_parser("ab", help="A/B experiments: configure, assign, report")
    actions = ab.add_subparsers(dest="ab_action", required=True, metavar="ACTION")

    def action(name: str, help_text: str, run) -> argparse.ArgumentParser:  # type: ignore[no-untyped-def]
        parser = actions.add_parser(name, help=help_text)
        parser.add_argument("--store", dest="store_dir", type=Path, help="event store directory")
        parser.set_defaults(run=_refusing(run))
        return parser

    create = action("create", "create an experiment", run_create)
    create.add_argument("name")
    create.add_argument(
        "--variant", dest="variants", action="append", type=parse_variant, required=True,
        help="NAME:MODEL_VERSION[:WEIGHT], once per variant; the first is the control; "
             "MODEL_VERSION may be production or candidate, to follow that registry alias",
    )  # fmt: skip
    create.add_argument("--start", type=_time, help="ISO-8601 start (default: now)")
    create.add_argument("--end", type=_time, help="ISO-8601 end (default: until stopped)")
    create.add_argument("--layer", help="experiments of one layer exclude each other (default)")
    create.add_argument("--traffic", type=float, help="share of the layer's users (1.0)")
    create.add_argument("--salt", help="hash salt (default: the name)")
    create.add_argument("--pre-period-days", type=float, help="CUPED pre-period (14; 0: off)")
    create.add_argument("--primary", type=_metrics, help="primary metrics, comma-separated")
    create.add_argument("--guardrails", type=_metrics, help="guardrail metrics, comma-separated")
    create.add_argument("--alpha", type=float, help="significance level (0.05)")
    create.add_argument("--min-users", type=int, help="exposed users a variant needs (100)")
    create.add_argument(
        "--multiple-testing", choices=["none", "holm", "bh"],
        help="adjust p over metrics x variants: holm (family-wise) or bh (false discovery rate)",
    )  # fmt: skip
    create.add_argument(
        "--correct-primary", action="store_true", default=None,
        help="include the primary metrics in the adjusted family (default: left out)",
    )  # fmt: skip
    create.add_argument(
        "--sequential-tau", type=float, help="prior sd of the lift, always-valid p (0.02)"
    )

    action("list", "list experiments", run_list)
    action("show", "print an experiment's configuration", run_show).add_argument("name")
    action("stop", "stop an experiment now", run_stop).add_argument("name")
    reweight = action("reweight", "change variant weights (users move only into growing ones)",
                      run_reweight)  # fmt: skip
    reweight.add_argument("name")
    reweight.add_argument("weights", nargs="+", help="VARIANT=WEIGHT for every variant")
    assign_parser = action("assign", "print the variant of each user", run_assign)
    assign_parser.add_argument("name")
    assign_parser.add_argument("users", nargs="+")
    simulate = action("simulate", "write synthetic traffic of an experiment as JSONL", run_simulate)
    simulate.add_argument("name")
    simulate.add_argument("--users", type=int, default=10_000, help="users to draw (10000)")
    simulate.add_argument("--gmv-lift", type=float, default=0.0, help="planted lift, e.g. 0.05")
    simulate.add_argument("--seed", type=int, default=0)
    simulate.add_argument("--out", default="-", help="file, or - for stdout (default)")
    report = action("report", "the experiment's lift and significance per metric", run_report)
    report.add_argument("name")
    report.add_argument("--out", type=Path, help="directory of the JSON and PNG")
    report.add_argument("--now", type=_time, help="report as of this time (default: now)")
    report.add_argument(
        "--raw", action="store_true", help="read the raw events even where a recent rollup exists"
    )
    rollup = action(
        "rollup", "keep every experiment's user rollup current, which reports read", run_rollup
    )
    rollup.add_argument(
        "--every", type=float, metavar="S", help="a round every S seconds (default: one round)"
    )
    plan = action("plan", "users and days needed to detect a lift, from recent traffic", run_plan)
    plan.add_argument("--metric", type=MetricName, default=MetricName.GMV_PER_USER,
                      help="the metric to power (gmv_per_user)")  # fmt: skip
    plan.add_argument("--lift", type=float, required=True,
                      help="smallest relative lift that matters, e.g. 0.02 for +2%%")  # fmt: skip
    plan.add_argument("--power", type=_share, default=0.8, help="chance to detect it (0.8)")
    plan.add_argument("--alpha", type=_share, default=0.05, help="significance level (0.05)")
    plan.add_argument("--weights", type=_weights, default={"control": 1.0, "treatment": 1.0},
                      help="variant weights, control first: 50,50 (default) or 90,10")  # fmt: skip
    plan.add_argument("--traffic", type=_share, default=1.0,
                      help="share of the layer's users the experiment takes (1.0)")  # fmt: skip
    plan.add_argument("--history-days", type=int, default=14,
                      help="days of recent traffic the plan reads (14)")  # fmt: skip
    plan.add_argument("--now", type=_time, help="plan as of this time (default: now)")
    plan.add_argument("--json", action="store_true", help="one JSON document instead of text")
    decide = action(
        "decide", "promote or roll back the treatment's version by the report", run_decide
    )
    decide.add_argument("name")
    decide.add_argument(
        "--metric", type=MetricName, help="the metric that decides (the first primary one)"
    )


def _refusing(run: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """The action, with a refused request printed as its reason (exit 2), not a traceback."""

    def guarded(args: argparse.Namespace) -> int:
        try:
            return run(args)
        except (ExperimentError, FileNotFoundError) as exc:
            err.print(f"pagellm ab: {exc}", markup=False)
            return 2

    return guarded


def run_create(args: argparse.Namespace) -> int:
    fields = {
        "name": args.name,
        "variants": tuple(args.variants),
        "start": args.start or datetime.now(UTC),
        "end": args.end,
        "layer": args.layer,
        "traffic": args.traffic,
        "salt": args.salt,
        "pre_period_days": args.pre_period_days,
        "primary_metrics": args.primary,
        "guardrails": args.guardrails,
        "alpha": args.alpha,
        "min_users_per_variant": args.min_users,
        "sequential_tau": args.sequential_tau,
        "multiple_testing": args.multiple_testing,
        "correct_primary": args.correct_primary,
    }
    experiment = Experiment.model_validate({k: v for k, v in fields.items() if v is not None})
    created = _registry(args).create(experiment)
    share = sum(hi - lo for lo, hi in created.layer_ranges) / 100
    err.print(f"created {created.name}: {share:.1f}% of layer {created.layer!r}", markup=False)
    return 0


def run_list(args: argparse.Namespace) -> int:
    table = Table("name", "layer", "traffic", "variants", "start", "end", "status")
    for e in _registry(args).list():
        status = "stopped" if e.stopped_at else ("running" if e.is_running() else "ended")
        variants = ", ".join(f"{v.name}={v.model_version} ({v.weight:g})" for v in e.variants)
        end = e.end.isoformat() if e.end else "-"
        table.add_row(e.name, e.layer, f"{e.traffic:.0%}", variants, e.start.isoformat(), end,
                      status)  # fmt: skip
    console.print(table)
    return 0


def run_show(args: argparse.Namespace) -> int:
    print(_registry(args).get(args.name).model_dump_json(indent=2))
    return 0


def run_stop(args: argparse.Namespace) -> int:
    stopped = _registry(args).stop(args.name)
    err.print(f"stopped {stopped.name} at {stopped.stopped_at:%Y-%m-%d %H:%M:%S} UTC")
    return 0


def run_reweight(args: argparse.Namespace) -> int:
    weights = {}
    for spec in args.weights:
        name, _, weight = spec.partition("=")
        try:
            weights[name] = float(weight)
        except ValueError:
            raise ExperimentError(f"weights: {spec!r} is not VARIANT=NUMBER") from None
    changed = _registry(args).reweight(args.name, weights)
    print(json.dumps({k: [list(r) for r in v] for k, v in changed.allocation.items()}))
    return 0


def run_assign(args: argparse.Namespace) -> int:
    experiment = _registry(args).get(args.name)
    for user in args.users:
        print(f"{user}\t{assign(experiment, user) or '-'}")
    return 0


def run_simulate(args: argparse.Namespace) -> int:
    from abtest.synthetic_traffic import TrafficShape, as_json_lines, synthetic_traffic

    experiment = _registry(args).get(args.name)
    # Events must not lie in the future: the window is cut at now.
    end = experiment.window_end() - timedelta(minutes=1)
    if end <= experiment.start:
        raise ExperimentError(f"experiment {args.name!r} has not started yet")
    shape = TrafficShape(gmv_lift=args.gmv_lift)
    traffic = synthetic_traffic(
        experiment, args.users, shape=shape, window_end=end, seed=args.seed, chunk_users=10_000
    )
    sink = sys.stdout.buffer if args.out == "-" else open(args.out, "wb")  # noqa: SIM115
    written = 0
    with sink, progress_bar(err) as bar:
        task = bar.add_task("simulating users", total=args.users)
        for chunk in traffic:
            for line in as_json_lines(chunk):
                sink.write(line + b"\n")
                written += 1
            bar.advance(task, 10_000)
    err.print(f"{written:,} events of {args.name}")
    return 0


def run_report(args: argparse.Namespace) -> int:
    from abtest.report import build_report, write_report
    from abtest.report_table import report_table

    store_dir = _store_dir(args)
    with err.status(f"computing the report of {args.name} over {store_dir} ..."):
        report = build_report(store_dir, args.name, args.now, raw=args.raw)
    console.print(report_table(report))
    files = write_report(report, args.out or store_dir / "experiments" / "reports")
    err.print(f"JSON: {files.json}" + (f"\nPNG:  {files.png}" if files.png else ""))
    if report.srm_flagged:
        return 3  # scripts must not miss it either
    return 0 if report.sufficient_data else 4


def run_rollup(args: argparse.Namespace) -> int:
    from abtest.user_rollup import RollupWorker

    store_dir = _store_dir(args)
    worker = RollupWorker(store_dir)
    with contextlib.suppress(KeyboardInterrupt):
        while True:
            with err.status(f"a rollup round over {store_dir} ..."):
                results = worker.run_round()
            for r in results:
                how = "rebuilt" if r.rebuilt else f"{r.changed_users:,} users recomputed"
                console.print(
                    f"rollup of {r.experiment}: {r.users:,} exposed users up to "
                    f"{r.window_end:%Y-%m-%d %H:%M:%S} UTC, {how}, {r.seconds:.1f} s"
                )
            if args.every is None:
                return 0
            time.sleep(args.every)
    return 0


def run_plan(args: argparse.Namespace) -> int:
    from abtest.planning import plan_experiment

    if not -1 < args.lift <= MAX_PLANNED_LIFT or args.lift == 0:
        raise ExperimentError(
            f"lift: {args.lift} cannot be planned for; give a relative lift above -1 and up to "
            f"{MAX_PLANNED_LIFT:g}, not 0, e.g. 0.02 for +2%"
        )
    if args.alpha >= MAX_ALPHA:
        raise ExperimentError(f"alpha: {args.alpha} is not below {MAX_ALPHA}, as experiments need")
    if args.power >= 1:
        raise ExperimentError("power: 1 would need infinitely many users; give e.g. 0.8")
    if args.history_days < 1:
        raise ExperimentError(f"history-days: {args.history_days} is not a positive number")
    plan = plan_experiment(
        _store_dir(args), args.metric, args.lift, alpha=args.alpha, power=args.power,
        weights=args.weights, traffic=args.traffic, history_days=args.history_days, now=args.now,
    )  # fmt: skip
    if args.json:
        print(plan.model_dump_json(indent=2))
        return 0
    label = METRICS[plan.metric].label
    per_variant = ", ".join(f"{name} {n:,}" for name, n in plan.users_per_variant.items())
    if plan.days is None:
        days = (
            f"never at the recent traffic: its last day reached no user its first "
            f"{args.history_days - 1} had not (the reach stopped at {plan.history_users:,})"
        )
    else:
        where = "within" if plan.days_within_history else "extrapolated beyond"
        days = f"about {math.ceil(plan.days)} ({where} the {args.history_days} days of history)"
    console.print(
        f"Plan for {label}: detect a {plan.lift:+.2%} relative lift at alpha {plan.alpha:g} "
        f"with {plan.power:.0%} power\n"
        f"History: {plan.history_users:,} users with impressions from "
        f"{plan.history_since:%Y-%m-%d %H:%M} to {plan.history_until:%Y-%m-%d %H:%M} UTC: "
        f"{label} {plan.baseline:.4g}, per-user sd {plan.per_user_sd:.4g}\n"
        f"Users needed: {per_variant} ({plan.users_total:,} in all; power "
        f"{plan.achieved_power:.1%})\n"
        f"Days at {plan.traffic:.0%} of the layer's users: {days}\n"
        "Without CUPED: a pre-period that explains a share rho^2 of the variance needs that "
        "share fewer users.",
        markup=False,
    )
    return 0


def run_decide(args: argparse.Namespace) -> int:
    """Exit 0 when the experiment decided (promote or roll back), 5 while it goes on."""
    from abtest.decision_actions import decide_and_act
    from abtest.report_table import report_table
    from learner.registry import RegistryError

    store_dir = _store_dir(args)
    with err.status(f"computing the report of {args.name} over {store_dir} ..."):
        try:
            record, report, files = decide_and_act(store_dir, args.name, args.metric)
        except RegistryError as exc:
            raise ExperimentError(str(exc)) from exc
    console.print(report_table(report))
    decision = record.decision
    console.print(
        f"decision on {decision.treatment} ({record.treatment_version}) by {decision.metric}: "
        f"{decision.action.upper()}: {decision.reason}\n{record.taken}",
        markup=False,
    )
    err.print(f"JSON: {files.json}" + (f"\nPNG:  {files.png}" if files.png else ""))
    return 5 if decision.action == "continue" else 0
