"""The serving logic, free of Ray and HTTP: route a request, plan it, generate its page (or the
fallback), and log its impression. The Ray Serve deployment (``serving.app``) wraps one of
these per replica and feeds it batches.

Versions change under traffic without a failed request: a background refresh loads every
version that routing may need *before* the routing table names it, then swaps the table in one
assignment; requests in flight keep the table they started with. Until a newly promoted version
is loaded, the previous production version goes on serving; a version nobody routes to any more
is dropped from the table, and freed once the last request holding it is done.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from abtest.experiment import Experiment
from abtest.registry import ExperimentRegistry
from learner.registry import ALIASES, ModelRegistry
from schemas import Impression, PageSlot
from schemas.page_api import (
    Health,
    LiveVersion,
    PageRequest,
    PageResponse,
    PageScore,
    ScoreRequest,
    ScoreResponse,
    VersionsResponse,
)
from serving.impression_log import ImpressionLog, impression_event_id
from serving.popularity import popularity_page
from serving.routing import (
    Route,
    follow_aliases,
    route,
    serving_experiments,
    versions_to_serve,
)
from serving.served_versions import (
    Fallback,
    LearnedVersion,
    PagePlan,
    ServedVersion,
    UnknownToVersion,
    load_served_version,
)
from serving.settings import ServingSettings
from serving.store_context import StoreContext, StoreReader, UserContext
from streams.settings import StreamSettings

log = logging.getLogger(__name__)

# A version that failed to load is tried again after this long, not at every refresh.
RETRY_FAILED_EVERY = timedelta(seconds=30)


class RequestRefused(Exception):
    """A request serving cannot answer; ``status`` is the HTTP status to answer with."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status, self.detail = status, detail


@dataclass(frozen=True)
class RoutingTable:
    """What routing reads, replaced whole on every change."""

    experiments: tuple[Experiment, ...] = ()
    production: str | None = None
    live: dict[str, ServedVersion] = field(default_factory=dict)
    loaded_at: dict[str, str] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    loading: tuple[str, ...] = ()


@dataclass
class PlannedRequest:
    request: PageRequest
    route: Route
    version: ServedVersion
    plan: PagePlan
    context: UserContext
    fallback_reason: str | None = None


class PageService:
    def __init__(self, serving: ServingSettings, streams: StreamSettings) -> None:
        self.settings, self.streams = serving, streams
        store_dir = Path(streams.store_dir)
        self.registry = ModelRegistry.for_store(store_dir)
        self.experiment_registry = ExperimentRegistry(store_dir)
        self.context = StoreContext(recent_events=serving.recent_events)
        self.reader = StoreReader(store_dir, self.context)
        self.table = RoutingTable()
        self._retry_failed_at = datetime.now(UTC)
        self.impressions = ImpressionLog(
            serving.spool_dir or store_dir / "serving" / "spool",
            streams.kafka_bootstrap,
            streams.events_topic,
            bound=serving.spool_bound,
        )

    # --- keeping up with the registry, the experiments and the store -----------------------

    def refresh_context(self) -> int:
        return self.reader.refresh()

    def refresh_versions(self, now: datetime | None = None) -> RoutingTable:
        """Load what routing now needs, then swap the table; returns the new table."""
        now = now or datetime.now(UTC)
        state = self.registry.state()
        aliases = {name: state.alias(name) for name in ALIASES}
        experiments = tuple(
            follow_aliases(e, aliases)
            for e in serving_experiments(self.experiment_registry.list(), now)
        )
        wanted = versions_to_serve(experiments, state.production)
        old = self.table
        live, loaded_at = dict(old.live), dict(old.loaded_at)
        failed = {v: why for v, why in old.failed.items() if v in wanted}
        if now >= self._retry_failed_at:  # a version named before it was published, say
            failed, self._retry_failed_at = {}, now + RETRY_FAILED_EVERY
        for version in sorted(wanted - set(live) - set(failed)):
            try:
                live[version] = load_served_version(self.registry, self.streams.store_dir, version)
                loaded_at[version] = datetime.now(UTC).isoformat(timespec="seconds")
            except Exception as exc:  # a version that cannot load must not stop the others
                log.exception("version %s could not be loaded", version)
                failed[version] = f"{type(exc).__name__}: {exc}"
        production = state.production if state.production in live else old.production
        keep = wanted | ({production} if production else set())
        table = RoutingTable(
            experiments,
            production,
            {v: m for v, m in live.items() if v in keep},
            {v: t for v, t in loaded_at.items() if v in keep},
            failed,
        )
        self.table = table
        dropped = set(old.live) - set(table.live)
        if dropped:
            log.info("unloaded %s", ", ".join(sorted(dropped)))
        return table

    # --- pages ------------------------------------------------------------------------------

    def plan(self, request: PageRequest, table: RoutingTable) -> PlannedRequest:
        """Route the request and write what its version needs; refuses with 503 when no
        version can serve it."""
        routed = route(request.user_id, table.experiments, table.production)
        context = self.context.user(request.user_id)
        plan = PagePlan(
            request.user_id,
            context.positives,
            frozenset(context.positives)
            | context.bought
            | frozenset(request.exclude)
            | self.context.deleted,
            request.k,
        )
        served = table.live.get(routed.version) if routed.version else None
        if served is not None:
            return PlannedRequest(request, routed, served, plan, context)
        if routed.version is None:
            raise RequestRefused(503, "no version to serve: no production version is loaded")
        # Not the load error itself: it names the server's paths, its exception classes and the
        # registered versions, and every client reads this (operators read /v1/versions).
        why = "failed to load" if routed.version in table.failed else "still loading"
        if table.production not in table.live:
            raise RequestRefused(503, f"version {routed.version} is not available ({why})")
        return PlannedRequest(
            request,
            Route(table.production),  # not the variant's page: the experiment does not count it
            table.live[table.production],
            plan,
            context,
            fallback_reason=f"version {routed.version} of {routed.experiment}/{routed.variant} "
            f"is not available ({why}); production served",
        )

    def fallback_page(self, planned: PlannedRequest) -> list[str]:
        """The cold-start page: the store's most popular items, those of the categories of the
        user's recent events first, none the user liked, bought or excluded."""
        plan = planned.plan
        category_of = {i: c.category for i, c in self.context.catalogue.items()}
        return popularity_page(
            self.context.popular_items(),
            plan.k,
            plan.banned,
            planned.context.recent_categories,
            category_of,
        )

    def pages(self, requests: Sequence[PageRequest]) -> list[PageResponse | RequestRefused]:
        """Answer a batch: one generation per version (and page size) for all its requests."""
        table = self.table
        planned: list[PlannedRequest | RequestRefused] = []
        for request in requests:
            try:
                planned.append(self.plan(request, table))
            except RequestRefused as refused:
                planned.append(refused)
        by_version: dict[str, list[int]] = {}
        for n, p in enumerate(planned):
            if isinstance(p, PlannedRequest):
                by_version.setdefault(p.version.version, []).append(n)
        pages: dict[int, list[str] | Fallback] = {}
        for rows in by_version.values():
            version = planned[rows[0]].version  # type: ignore[union-attr]
            made = version.pages([planned[n].plan for n in rows])  # type: ignore[union-attr]
            pages.update(zip(rows, made, strict=True))
        return [
            p if isinstance(p, RequestRefused) else self.answer(p, pages[n])
            for n, p in enumerate(planned)
        ]

    def answer(
        self, planned: PlannedRequest, made: list[str] | Fallback
    ) -> PageResponse | RequestRefused:
        reason = planned.fallback_reason
        if isinstance(made, Fallback):
            reason = made.reason
            made = self.fallback_page(planned)
        if len(made) < planned.plan.k:
            return RequestRefused(
                422, f"k: only {len(made)} items are left for this user after the exclusions"
            )
        request_id = uuid.uuid4().hex
        slots = [PageSlot(item_id=i, position=n) for n, i in enumerate(made, start=1)]
        self.impressions.record(
            Impression(
                type="impression",
                event_id=impression_event_id(request_id),
                user_id=planned.request.user_id,
                session_id=planned.request.session_id or f"s-{request_id}",
                ts=datetime.now(UTC),
                request_id=request_id,
                items=slots,
                model_version=planned.version.version,
                experiment=planned.route.experiment,
                variant=planned.route.variant,
            )
        )
        return PageResponse(
            request_id=request_id,
            items=slots,
            model_version=planned.version.version,
            experiment=planned.route.experiment,
            variant=planned.route.variant,
            fallback_reason=reason,
        )

    # --- scores, versions, health -------------------------------------------------------------

    def score(self, request: ScoreRequest) -> ScoreResponse:
        """R_c and R_f of each page from the reward model of the user's version (production's
        when that version is not a learned one)."""
        table = self.table
        routed = route(request.user_id, table.experiments, table.production)
        served = table.live.get(routed.version) if routed.version else None
        if not isinstance(served, LearnedVersion):
            routed = Route(table.production)
            served = table.live.get(table.production) if table.production else None
        if not isinstance(served, LearnedVersion):
            raise RequestRefused(503, "no learned version is live to score pages with")
        positives = self.context.user(request.user_id).positives
        try:
            scores = served.score(request.user_id, positives, request.pages)
        except UnknownToVersion as exc:
            raise RequestRefused(422, str(exc)) from None
        return ScoreResponse(
            model_version=served.version,
            experiment=routed.experiment,
            variant=routed.variant,
            scores=[PageScore(page_reward=c, item_reward=f) for c, f in scores],
        )

    def versions(self) -> VersionsResponse:
        table = self.table
        status = self.registry.state().status
        serves: dict[str, list[str]] = {v: [] for v in table.live}
        if table.production:
            serves.setdefault(table.production, []).append("production")
        for e in table.experiments:
            for v in e.variants:
                serves.setdefault(v.model_version, []).append(f"{e.name}/{v.name}")
        return VersionsResponse(
            production=table.production,
            versions=[
                LiveVersion(
                    version=v,
                    kind=m.kind,
                    status=status.get(v, "unknown"),
                    serves=serves.get(v, []),
                    loaded_at=table.loaded_at.get(v, ""),
                )
                for v, m in sorted(table.live.items())
            ],
            loading=[v for v in serves if v not in table.live and v not in table.failed],
            failed=table.failed,
        )

    def health(self) -> Health:
        table = self.table
        spool = self.impressions.health()
        reasons = []
        if table.production is None:
            reasons.append("no production version is loaded")
        if table.failed:
            reasons.append(f"versions failed to load: {', '.join(sorted(table.failed))}")
        if not spool.kafka_connected:
            reasons.append("Kafka unreachable: impressions are spooled")
        if spool.dropped:
            reasons.append(f"{spool.dropped} impressions dropped (spool full)")
        return Health(
            status="degraded" if reasons else "ok",
            reasons=reasons,
            production=table.production,
            live_versions=sorted(table.live),
            impressions=spool,
        )

    def close(self) -> int:
        return self.impressions.close()
