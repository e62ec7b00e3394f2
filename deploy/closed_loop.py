"""The main job: the whole platform on one machine, from an empty broker to an A/B decision.

Read top to bottom, ``run_closed_loop`` is the platform's life in ten stages:

1. broker      a local Kafka (or ``PAGELLM_KAFKA_BOOTSTRAP``) and its topics;
2. workers     ingest workers and a derive worker, as processes of their own;
3. bootstrap   the simulated shop's catalogue and history, through Kafka into the store;
4. ray         one local Ray for training and serving;
5. serving     the page API on Ray Serve (starting while the first model trains);
6. training    the first version, every stage, published and promoted by its gates;
7. experiment  a popularity version against the PageLLM policy, 50/50 by user id (the
               treatment follows ``production``, so every promoted retrain reaches it);
8. traffic     simulated users ask for pages and click and buy; meanwhile the retrain loop
               retrains every ``retrain_every_s`` and promotes what passes its gates;
9. drain       every produced click and purchase stored, every impression delivered;
10. decision   the A/B report (table and PNG) and ``ab decide``'s verdict, acted on.

Everything it starts is stopped on the way out, Ctrl-C included; the store, the registry and
the logs stay under ``root``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import httpx
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict
from rich.console import Console
from rich.progress import Progress

from abtest.analysis import Report
from abtest.decision_actions import DecisionRecord
from abtest.experiment import Experiment, Variant
from abtest.metrics import MetricName
from abtest.registry import ExperimentRegistry
from deploy.local_kafka import LocalKafka
from deploy.simulated_users import Population, SimulatorSettings, build_population
from deploy.user_simulator import UserSimulator
from learner.ablations import Ablation
from learner.command_options import stage_progress
from learner.registry import ModelRegistry
from learner.retrain_loop import RetrainLoop
from learner.settings import LearnerSettings, RetrainSettings
from schemas.model_registry import RetrainRecord
from serving.server import LOG_FILE, read_state, spawn_server
from streams.derive.derived_state import DeriveConfig
from streams.ingest.producer import EventProducer
from streams.ingest.topics import ensure_topics
from streams.ingest.worker_process import settings_env, spawn_pagellm, spawn_worker, stop_worker
from streams.progress_bars import progress_bar
from streams.settings import StreamSettings
from streams.store.event_store import EventStore
from streams.store.store_views import connect_store

if TYPE_CHECKING:  # it imports torch: the loop loads it when it trains, not when imported
    from learner.ray_jobs import RayStageRunner

log = logging.getLogger(__name__)

MIN_TRAFFIC_S = 30.0  # less is no experiment: too few users would be exposed
CONTROL, TREATMENT = "popularity", "pagellm"  # the experiment's variants

STORED_FEEDBACK = """SELECT count(DISTINCT event_id) FROM events
    WHERE event_id LIKE 'sim-click-%' OR event_id LIKE 'sim-buy-%'"""


class LoopSettings(BaseSettings):
    """The main job's run (``PAGELLM_DEMO_*``); the users are ``PAGELLM_SIM_*``."""

    model_config = SettingsConfigDict(env_prefix="PAGELLM_DEMO_", extra="ignore")

    root: Path = Field(Path("var/demo"), description="store, registry and logs of the run")
    budget_s: float = Field(570.0, ge=120, description="the run from start to decision, at most")
    finish_reserve_s: float = Field(
        45.0, ge=10, description="kept at the end for draining, the report and the decision"
    )
    retrain_every_s: float = Field(
        90.0, gt=0, description="during traffic, a retrain starts this long after the last"
    )
    retrains: int | None = Field(
        None,
        ge=1,
        description="traffic ends once this many retrains have finished and each variant has "
        "shown pages to min_users_per_variant users (None: at the budget)",
    )
    ingest_workers: int = Field(1, ge=1)
    prompt_length: int = Field(10, ge=1, description="positives in a prompt (the paper: 20)")
    experiment: str = "pagellm-vs-popularity"
    sequential_tau: float = Field(
        0.3, gt=0, description="prior sd of the lift in the always-valid p: tens of percent"
    )
    min_users_per_variant: int = Field(100, ge=2, description="below it, results are withheld")
    learner_settings: Path | None = Field(None, description="LearnerSettings JSON (paper's)")
    # In this world PPO's reward learned item popularity, and its policy's pages are worth about
    # half the fine-tuned policy's (README, "Where the learning is lost"): the loop serves the
    # fine-tuned policy until the reward is fixed (retrains fine-tune it on their snapshot).
    ablation: Ablation = Field("sft", description="the policy every version serves (paper: both)")
    server_timeout_s: float = Field(240.0, gt=0, description="for serving to come up")


@dataclass
class LoopOutcome:
    """What the run did, for the console and for ``make bench-loop``."""

    stage_seconds: dict[str, float] = field(default_factory=dict)
    produced: dict[str, float] = field(default_factory=dict)  # feedback event id -> unix time
    stored_feedback: int = 0
    pages_served: int = 0  # answered page requests: each is an impression serving must write
    failed_requests: int = 0
    last_request_error: str = ""
    exhausted_requests: int = 0  # 422: the user had nothing left to be shown
    bootstrap_events: int = 0
    retrains: list[RetrainRecord] = field(default_factory=list)
    traffic_ended_on: Literal["", "budget", "retrains"] = ""
    decision: DecisionRecord | None = None
    report: Report | None = None
    report_png: Path | None = None
    started_pids: list[int] = field(default_factory=list)  # every process it started
    ray_session_dir: str = ""  # every process of its Ray names it on its command line


class LoopFailed(RuntimeError):
    """A stage could not complete; the message says which and where its log is."""


def wait_until(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    """Poll ``condition`` (another process's progress: there is nothing to wait on)."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise LoopFailed(f"{what}: not reached within {timeout_s:.0f} s")
        time.sleep(0.25)


def count(store_dir: Path, sql: str) -> int:
    try:
        with connect_store(store_dir) as con:
            return int(con.execute(sql).fetchone()[0])  # type: ignore[index]
    except FileNotFoundError:
        return 0


def _or_error(call: Callable[[], RetrainRecord]) -> RetrainRecord | BaseException:
    try:
        return call()
    except BaseException as exc:  # handed to the waiting thread, which raises it
        return exc


class ClosedLoop:
    """One run; ``run()`` is the ten stages in order, each timed into ``outcome``."""

    def __init__(self, settings: LoopSettings, users: SimulatorSettings, console: Console) -> None:
        self.settings, self.users, self.console = settings, users, console
        self.root = settings.root
        self.outcome = LoopOutcome()
        self.learner = (
            LearnerSettings.model_validate_json(settings.learner_settings.read_text())
            if settings.learner_settings
            else LearnerSettings()
        )
        self.derive = DeriveConfig(prompt_length=settings.prompt_length)
        self.started = time.monotonic()
        self.retrain_s = 0.0  # how long a retrain takes (see run_traffic)

    @contextlib.contextmanager
    def stage(self, name: str, progress: Progress) -> Iterator[None]:
        task = progress.add_task(name, total=None)
        start = time.monotonic()
        yield
        self.outcome.stage_seconds[name] = time.monotonic() - start
        progress.update(task, total=1, completed=1)

    def run(self) -> LoopOutcome:
        import torch
        from transformers.utils import logging as transformers_logging

        # This process evaluates candidates for their gates while a training worker runs: on a
        # small machine more threads than one would contend with it.
        torch.set_num_threads(1)

        # Every retrain loads and saves models: transformers' bars would bury the stages'.
        transformers_logging.disable_progress_bar()
        before = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
        self.stop_on_signals()
        with contextlib.ExitStack() as cleanup:
            try:
                with progress_bar(self.console) as progress:
                    self.run_stages(progress, cleanup)
            finally:  # cleanup runs to its end: a second Ctrl-C must not leave half of it up
                for sig in before:
                    signal.signal(sig, signal.SIG_IGN)
        for sig, handler in before.items():
            signal.signal(sig, handler)
        return self.outcome

    @staticmethod
    def stop_on_signals() -> None:
        """Ctrl-C and SIGTERM (a supervisor's stop) both end the run through its cleanup."""

        def interrupt(signum: int, _frame: object) -> None:
            raise KeyboardInterrupt(signal.Signals(signum).name)

        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, interrupt)

    def run_stages(self, progress: Progress, cleanup: contextlib.ExitStack) -> None:
        with self.stage("broker", progress):
            streams = self.start_broker(cleanup)
        with self.stage("workers", progress):
            self.start_workers(streams, cleanup)
        with self.stage("bootstrap", progress):
            population = self.bootstrap(streams)
        with self.stage("ray", progress):
            ray_address = self.start_ray(cleanup)
            runner = self.training_runner(cleanup)
        server = self.start_server(streams, ray_address, cleanup)  # comes up while we train
        with self.stage("training", progress):
            first = self.train_first_version(progress, runner)
        with self.stage("experiment", progress):
            self.start_experiment(streams.store_dir, first)
        with self.stage("serving", progress):
            url = self.wait_for_server(server)
        with self.stage("traffic", progress):
            pages = self.outcome.pages_served = self.run_traffic(
                population, url, streams, progress, runner
            )
        with self.stage("drain", progress):
            self.drain(streams, url, pages)
        with self.stage("decision", progress):
            self.decide(streams.store_dir)

    # --- 1-4: the parts --------------------------------------------------------------------

    def start_broker(self, cleanup: contextlib.ExitStack) -> StreamSettings:
        bootstrap = os.environ.get("PAGELLM_KAFKA_BOOTSTRAP")
        if bootstrap is None:
            kafka = LocalKafka(self.root / "kafka")
            broker = kafka.start()
            self.outcome.started_pids.append(broker.pid)
            bootstrap = broker.bootstrap
            cleanup.callback(kafka.stop)
        # A fresh broker starts offsets at 0: an old store would take new events for replays.
        for old in ("store", "serve"):
            shutil.rmtree(self.root / old, ignore_errors=True)
        streams = StreamSettings(kafka_bootstrap=bootstrap, store_dir=self.root / "store")
        ensure_topics(streams)
        return streams

    def start_workers(self, streams: StreamSettings, cleanup: contextlib.ExitStack) -> None:
        logs = self.root / "logs"
        EventStore(streams.store_dir).init()  # the derive worker reads the ledger from the start
        for n in range(self.settings.ingest_workers):
            proc = spawn_worker(streams, f"loop-w{n}", logs / f"ingest-{n}.log")
            self.outcome.started_pids.append(proc.pid)
            cleanup.callback(stop_worker, proc)
        derive = spawn_pagellm(
            streams,
            ["derive", "--prompt-length", str(self.settings.prompt_length)],
            logs / "derive.log",
        )
        self.outcome.started_pids.append(derive.pid)
        cleanup.callback(stop_worker, derive)

    def bootstrap(self, streams: StreamSettings) -> Population:
        population = build_population(self.users, datetime.now(UTC))
        with EventProducer(streams.kafka_bootstrap, streams.catalogue_topic) as catalogue:
            for item in population.catalogue.items():
                catalogue.send_raw(item.item_id.encode(), item.model_dump_json().encode())
        with EventProducer(streams.kafka_bootstrap, streams.events_topic) as producer:
            producer.send_all(population.history)
        if producer.report.failed or catalogue.report.failed:
            raise LoopFailed(f"bootstrap: {producer.report.failed} events not acknowledged")
        want, items = len(population.history), len(population.catalogue.item_ids)
        wait_until(
            lambda: (
                count(streams.store_dir, "SELECT count(*) FROM ratings") >= want
                and count(streams.store_dir, "SELECT count(*) FROM catalogue") >= items
            ),
            120,
            f"bootstrap: {want} ratings and {items} catalogue items in the store",
        )
        self.outcome.bootstrap_events = want
        return population

    def start_ray(self, cleanup: contextlib.ExitStack) -> str:
        """A local Ray for this run (its processes block SIGINT: a Ctrl-C reaches them through
        our cleanup, after the server has drained its spool); its GCS address."""
        import ray

        from learner.ray_jobs import ray_init_options

        # Logical CPUs above the cores: the serving replica and a training worker each ask for
        # one, and on two cores they must share rather than wait for each other.
        options = ray_init_options(self.learner.ray) | {
            "address": "local",  # a new Ray, whatever cluster `ray start` may have left named
            "num_cpus": 2 * (os.cpu_count() or 2),
        }
        context = ray.init(**options)
        self.stop_on_signals()  # ray.init put in a SIGTERM handler that would exit at once
        cleanup.callback(ray.shutdown)
        self.outcome.ray_session_dir = str(context.address_info["session_dir"])
        return str(context.address_info["gcs_address"])

    def training_runner(self, cleanup: contextlib.ExitStack) -> RayStageRunner:
        """One runner for the first version and every retrain: with one worker it stays warm
        between them (``RaySettings.keep_warm``), and is released before Ray stops."""
        from learner.ray_jobs import RayStageRunner

        runner = RayStageRunner(self.learner.ray)
        cleanup.callback(runner.release_warm_worker)
        return runner

    # --- 5-7: serving, the first version, the experiment ---------------------------------

    def start_server(
        self, streams: StreamSettings, ray_address: str, cleanup: contextlib.ExitStack
    ) -> subprocess.Popen[bytes]:
        run_dir = (self.root / "serve").resolve()
        env = settings_env(streams)
        env |= {"PAGELLM_SERVE_PORT": "0", "PAGELLM_SERVE_RUN_DIR": str(run_dir)}
        env |= {"RAY_ADDRESS": ray_address}
        server = spawn_server(env, run_dir)  # stopped by us, in order, after the traffic
        self.outcome.started_pids.append(server.pid)
        cleanup.callback(stop_worker, server, 60.0)
        return server

    def retrain_settings(self, **triggers: float) -> RetrainSettings:
        """What every retrain of the run, the first version's too, trains and serves."""
        return RetrainSettings(ablation=self.settings.ablation, **triggers)

    def train_first_version(self, progress: Progress, runner: RayStageRunner) -> str:
        from learner.retrain import RetrainJob, retrain

        job = RetrainJob(
            store_dir=self.root / "store",
            learner=self.learner,
            settings=self.retrain_settings(),
            runner=runner,
            trigger="bootstrap: the first version",
            full=True,
            derive=self.derive,
            on_stage=stage_progress(progress),
        )
        # In a thread of its own: Ray Train takes over SIGINT when it fits in the main thread,
        # and a Ctrl-C must stop the whole loop, not abort this job alone.
        outcome: list[RetrainRecord | BaseException] = []
        thread = threading.Thread(
            target=lambda: outcome.append(_or_error(lambda: retrain(job))), name="first-version"
        )
        thread.start()
        while thread.is_alive():
            thread.join(0.5)
        if isinstance(outcome[0], BaseException):
            raise outcome[0]
        record = outcome[0]
        self.outcome.retrains.append(record)
        if not (record.state == "registered" and record.promoted and record.version):
            raise LoopFailed(f"the first version was not promoted: {record.state} {record.error}")
        return record.version

    def start_experiment(self, store_dir: Path, first: str) -> None:
        from serving.popularity import register_store_popularity

        popularity = register_store_popularity(store_dir)
        ExperimentRegistry(store_dir).create(
            Experiment(
                name=self.settings.experiment,
                variants=(
                    Variant(name=CONTROL, weight=1, model_version=popularity.version),
                    Variant(name=TREATMENT, weight=1, model_version="production"),
                ),
                start=datetime.now(UTC),
                pre_period_days=0,  # the shop's history holds ratings only, no pages
                primary_metrics=(MetricName.CTR, MetricName.GMV_PER_USER),
                guardrails=(MetricName.SESSION_FAILURE_RATE,),
                sequential_tau=self.settings.sequential_tau,
                min_users_per_variant=self.settings.min_users_per_variant,
            )
        )
        log.info("experiment: %s (popularity) against production (%s)", popularity.version, first)

    def wait_for_server(self, server: subprocess.Popen[bytes]) -> str:
        run_dir = (self.root / "serve").resolve()

        def ready() -> bool:
            if server.poll() is not None:
                raise LoopFailed(f"serving exited; its log: {run_dir / LOG_FILE}")
            state = read_state(run_dir)
            if state is None:
                return False
            try:
                health = httpx.get(f"{state.url}/v1/health", timeout=5)
                versions = httpx.get(f"{state.url}/v1/versions", timeout=5).json()
            except httpx.HTTPError:
                return False
            routed = [v for v in versions.get("versions", []) if v["serves"]]
            return health.status_code == 200 and len(routed) >= 2

        wait_until(ready, self.settings.server_timeout_s, "serving every version of the experiment")
        state = read_state(run_dir)
        assert state is not None
        return state.url

    # --- 8: traffic while the loop retrains ----------------------------------------------

    def run_traffic(
        self,
        population: Population,
        url: str,
        streams: StreamSettings,
        progress: Progress,
        runner: RayStageRunner,
    ) -> int:
        """Simulated users until the budget's end, retraining meanwhile; the pages served."""
        end = self.started + self.settings.budget_s - self.settings.finish_reserve_s
        if end - time.monotonic() < MIN_TRAFFIC_S:
            raise LoopFailed(
                f"budget_s: {self.settings.budget_s:.0f} s leaves {end - time.monotonic():.0f} s "
                f"of traffic after {time.monotonic() - self.started:.0f} s of setup (at least "
                f"{MIN_TRAFFIC_S:.0f} s needed); raise --budget-s (PAGELLM_DEMO_BUDGET_S)"
            )
        # How long a retrain takes: the first version's training until a retrain has finished
        # (warm retrains are faster, so the first guess errs on the safe side).
        self.retrain_s = self.outcome.stage_seconds["training"]

        def on_retrain(record: RetrainRecord) -> None:
            self.outcome.retrains.append(record)
            if record.finished_at:
                self.retrain_s = (record.finished_at - record.started_at).total_seconds()

        before = len(self.outcome.retrains)  # the first version's training is one
        loop = self.retrain_loop(streams, progress, on_retrain, runner)
        loop_stop, traffic_stop = threading.Event(), threading.Event()

        def retrain_when_due() -> None:
            if not loop_stop.wait(self.settings.retrain_every_s):
                loop.run(loop_stop)

        with EventProducer(streams.kafka_bootstrap, streams.events_topic) as producer:
            simulator = UserSimulator(population, f"{url}/v1/page", producer)
            users = threading.Thread(target=simulator.run, args=(traffic_stop,), name="users")
            retrains = threading.Thread(target=retrain_when_due, name="retrains", daemon=True)
            users.start()
            retrains.start()
            begin = time.monotonic()
            task = progress.add_task("simulated users", total=round(end - begin))
            finished = False
            try:
                while time.monotonic() < end:
                    if self.traffic_done(simulator, begin, before):
                        self.outcome.traffic_ended_on = "retrains"
                        break
                    if time.monotonic() + self.retrain_s >= end:
                        loop_stop.set()  # a retrain started now would not finish in time
                    progress.update(
                        task,
                        completed=round(time.monotonic() - begin),
                        description=self._traffic_line(simulator),
                    )
                    time.sleep(0.5)
                else:
                    self.outcome.traffic_ended_on = "budget"
                finished = True
            finally:
                loop_stop.set()
                traffic_stop.set()
                users.join()
                if finished:  # a retrain in flight ends first; on Ctrl-C, Ray's end stops it
                    retrains.join()
        if producer.report.failed:
            raise LoopFailed(f"traffic: {producer.report.failed} events were not acknowledged")
        self.outcome.produced = dict(simulator.log.produced_at)
        self.outcome.failed_requests = simulator.log.failed_requests
        self.outcome.exhausted_requests = simulator.log.exhausted
        self.outcome.last_request_error = simulator.log.last_error
        with simulator.log.lock:
            return sum(t.pages for t in simulator.log.tallies.values())

    def traffic_done(
        self, simulator: UserSimulator, traffic_began: float, retrains_before: int
    ) -> bool:
        """The asked-for retrains have finished in traffic, after at least its minimum, and
        each variant has shown pages to enough users for the report to decide (on a slow
        machine 30 s of traffic reached too few, and the report withheld its results)."""
        wanted = self.settings.retrains
        with simulator.log.lock:
            tallies = simulator.log.tallies
            exposed = [len(tallies[v].users) if v in tallies else 0 for v in (CONTROL, TREATMENT)]
        return (
            wanted is not None
            and len(self.outcome.retrains) - retrains_before >= wanted
            and time.monotonic() - traffic_began >= MIN_TRAFFIC_S
            and min(exposed) >= self.settings.min_users_per_variant
        )

    def retrain_loop(
        self,
        streams: StreamSettings,
        progress: Progress,
        on_retrain: Callable[[RetrainRecord], None],
        runner: RayStageRunner,
    ) -> RetrainLoop:
        """The continuous-learning loop on the interval trigger alone, training on our Ray."""
        from learner.retrain import RetrainJob

        settings = self.retrain_settings(
            interval_s=self.settings.retrain_every_s, min_new_pairs=0, poll_s=1.0
        )
        return RetrainLoop(
            streams.store_dir,
            settings,
            lambda trigger: RetrainJob(
                store_dir=streams.store_dir,
                learner=self.learner,
                settings=settings,
                runner=runner,
                trigger=trigger,
                derive=self.derive,
                on_stage=stage_progress(progress),
            ),
            on_retrain=on_retrain,
        )

    def _traffic_line(self, simulator: UserSimulator) -> str:
        traffic = simulator.log
        with traffic.lock:
            parts = [
                f"{variant} {t.pages} pages CTR {t.ctr:.3f} GMV {t.gmv:,.0f}"
                for variant, t in sorted(traffic.tallies.items())
            ]
            failed = f" | {traffic.failed_requests} failed" if traffic.failed_requests else ""
        production = ModelRegistry.for_store(self.root / "store").state().production
        return f"users: {' | '.join(parts) or 'starting'} | production {production}{failed}"

    # --- 9-10: drain, report, decide -----------------------------------------------------

    def drain(self, streams: StreamSettings, url: str, pages: int) -> None:
        produced = len(self.outcome.produced)

        def stored() -> int:
            return count(streams.store_dir, STORED_FEEDBACK)

        def impressions() -> int:
            return count(streams.store_dir, "SELECT count(*) FROM impressions")

        wait_until(lambda: stored() >= produced, 60, f"{produced} clicks and purchases stored")
        wait_until(lambda: impressions() >= pages, 60, f"{pages} impressions stored")
        self.outcome.stored_feedback = stored()

    def decide(self, store_dir: Path) -> None:
        from abtest.decision_actions import decide_and_act

        record, report, files = decide_and_act(store_dir, self.settings.experiment)
        self.outcome.decision, self.outcome.report, self.outcome.report_png = (
            record,
            report,
            files.png,
        )
