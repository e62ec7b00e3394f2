"""``make demo``: the closed loop (``deploy.closed_loop``) with its results on the console.

Library logging goes to ``ROOT/logs/loop.log`` while it runs, so the progress bars stay
readable; the workers, the server and Ray's workers write logs of their own beside it.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator
from pathlib import Path

from rich.console import Console
from rich.table import Table

from abtest.report_table import report_table
from deploy.closed_loop import ClosedLoop, LoopFailed, LoopOutcome, LoopSettings
from deploy.simulated_users import SimulatorSettings
from streams.cli import print_query
from streams.store.store_views import connect_store

# Piped output (a file, a CI log) gets room for the report table instead of 80 columns.
console = Console(soft_wrap=True, width=None if sys.stdout.isatty() else 160)

ANALYST_QUERIES = {
    "Events by type": "SELECT type, count(*) AS events FROM events GROUP BY 1 ORDER BY 2 DESC",
    "Pages, CTR and GMV by model version": """
        WITH shown AS (SELECT model_version, count(*) AS pages FROM impressions GROUP BY 1),
             clicked AS (SELECT i.model_version, count(*) AS clicks FROM clicks c
                         JOIN impressions i USING (request_id) GROUP BY 1),
             bought AS (SELECT i.model_version, sum(p.gmv) AS gmv FROM purchases p
                        JOIN impressions i USING (request_id) GROUP BY 1)
        SELECT model_version, pages, clicks, round(clicks / pages, 4) AS ctr, gmv
        FROM shown LEFT JOIN clicked USING (model_version) LEFT JOIN bought USING (model_version)
        ORDER BY model_version""",
}


@contextlib.contextmanager
def logging_to(path: Path) -> Iterator[None]:
    """Every log record to ``path`` instead of the console, for the run's length."""
    path.parent.mkdir(parents=True, exist_ok=True)
    root = logging.getLogger()
    console_handlers = list(root.handlers)
    to_file = logging.FileHandler(path)
    to_file.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    for handler in console_handlers:
        root.removeHandler(handler)
    root.addHandler(to_file)
    try:
        yield
    finally:
        root.removeHandler(to_file)
        to_file.close()
        for handler in console_handlers:
            root.addHandler(handler)


def run_demo(settings: LoopSettings, users: SimulatorSettings) -> int:
    console.print(
        f"The closed loop on this machine, in at most {settings.budget_s:.0f} s: "
        f"{users.users} simulated users, a popularity policy against PageLLM, "
        f"retraining every {settings.retrain_every_s:.0f} s. Logs: {settings.root / 'logs'}"
    )
    loop = ClosedLoop(settings, users, console)
    try:
        with logging_to(settings.root / "logs" / "loop.log"):
            outcome = loop.run()
    except LoopFailed as exc:
        console.print(f"[red]the loop stopped:[/red] {exc}", markup=True)
        return 1
    except KeyboardInterrupt:
        console.print("interrupted: everything the loop started is stopped")
        return 130
    show(outcome, settings)
    return 0


def show(outcome: LoopOutcome, settings: LoopSettings) -> None:
    ended = {"budget": " (traffic ran to the budget)", "retrains": " (traffic ended on retrains)"}
    title = "Stages" + ended.get(outcome.traffic_ended_on, "")
    stages = Table("stage", "seconds", title=title, title_justify="left")
    for name, seconds in outcome.stage_seconds.items():
        stages.add_row(name, f"{seconds:.1f}")
    stages.add_row("total", f"{sum(outcome.stage_seconds.values()):.1f}")
    console.print(stages)

    retrains = Table("retrain", "trigger", "state", "version", "promoted", "gate",
                     title="Retrains", title_justify="left")  # fmt: skip
    for r in outcome.retrains:
        why = r.gate_reason or r.error or ""
        retrains.add_row(r.retrain_id, r.trigger, r.state, r.version or "", str(r.promoted), why)
    console.print(retrains)

    store = settings.root / "store"
    con = connect_store(store)
    for title, query in ANALYST_QUERIES.items():
        print_query(con, query, title=title)
    produced = len(outcome.produced)
    console.print(
        f"Simulated clicks and purchases: {produced} produced, {outcome.stored_feedback} "
        f"stored, {produced - outcome.stored_feedback} lost; {outcome.pages_served} pages served, "
        f"{outcome.exhausted_requests} refused because the user had seen everything, "
        f"{outcome.failed_requests} failed"
        + (f" (the last: {outcome.last_request_error})" if outcome.failed_requests else "")
        + "."
    )
    if outcome.report is not None and outcome.decision is not None:
        console.print(report_table(outcome.report))
        verdict = outcome.decision.decision
        console.print(
            f"ab decide {settings.experiment}: {verdict.action.upper()}: {verdict.reason}\n"
            f"{outcome.decision.taken}",
            markup=False,
        )
    if outcome.report_png:
        console.print(f"The lifts as a plot: {outcome.report_png}")
    console.print(
        f"The store, the registry and the experiment stay in {store}. Query them with\n"
        f"  .venv/bin/pagellm store sql --store {store} "
        '"SELECT type, count(*) FROM events GROUP BY 1"\n'
        f"  .venv/bin/pagellm registry list --store {store}"
    )
