"""The Ray Serve application: one FastAPI ingress deployment whose replicas each hold every
live version (the routing table of ``PageService``).

Why not a deployment per version, or Ray Serve's multiplexed models behind the ingress: both
put a second hop (ingress -> model replica) on every request, about as much again as the HTTP
proxy -> replica hop that is Ray Serve's whole floor here, and on two cores more replicas do
not add throughput. Holding the versions in the ingress replica keeps one hop, lets one
``@serve.batch`` batch requests across clients *and* versions (one generation per version per
batch), and lets a new version load fully before routing names it. Replicas scale out with
``replicas``; each loads the same versions.
"""

# No ``from __future__ import annotations`` here: FastAPI reads the endpoints' annotations at
# runtime, and through Ray Serve's ingress wrapper string annotations resolve to nothing.
import asyncio
import logging
import threading
from typing import Any

import torch
from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from ray import serve

from schemas.page_api import (
    Health,
    PageRequest,
    PageResponse,
    ScoreRequest,
    ScoreResponse,
    VersionsResponse,
)
from serving.body_deadline import BodyDeadline
from serving.page_service import PageService, RequestRefused
from serving.settings import ServingSettings
from serving.strict_json_routes import StrictJsonRoute
from streams.settings import StreamSettings

log = logging.getLogger(__name__)

api = FastAPI(
    title="PageLLM serving",
    version="1",
    description="Whole pages from the live model versions, routed by A/B variant.",
)
api.router.route_class = StrictJsonRoute


def describe_request_errors(exc: RequestValidationError) -> str:
    """'field.path: reason; ...' with FastAPI's leading 'body' dropped, unless the body itself
    is at fault (missing, or not an object): then the field is 'body'."""
    parts = []
    for error in exc.errors():
        path = [str(p) for p in error.get("loc", ())]
        loc = [p for p in path if p != "body"] or path
        message = error.get("msg", "").removeprefix("Value error, ")
        if error.get("type") == "json_invalid":
            why = error.get("ctx", {}).get("error", message)
            loc, message = [], f"body: not valid JSON ({why})"
        parts.append(f"{'.'.join(loc)}: {message}" if loc else message)
    return "; ".join(parts)


@api.exception_handler(RequestValidationError)
async def _invalid_request(_request: Request, exc: RequestValidationError) -> JSONResponse:
    return JSONResponse(status_code=422, content={"detail": describe_request_errors(exc)})


def unwrap(result: PageResponse | RequestRefused) -> PageResponse:
    if isinstance(result, RequestRefused):
        raise HTTPException(result.status, result.detail)
    return result


@serve.deployment(
    max_ongoing_requests=256,
    graceful_shutdown_timeout_s=30,
    logging_config={"enable_access_log": False},
)
@serve.ingress(api)
class PageDeployment:
    def __init__(self, serving: dict[str, Any], streams: dict[str, Any]) -> None:
        torch.set_num_threads(1)  # one replica per core is the fastest use of a small machine
        self.settings = ServingSettings(**serving)
        # FastAPI's own limit (413 as soon as a body, declared or streamed, passes it); its
        # middleware stack is built at the first request, after this.
        api.max_body_size = self.settings.max_body_bytes
        api.add_middleware(BodyDeadline, seconds=self.settings.body_timeout_s)
        self.service = PageService(self.settings, StreamSettings(**streams))
        self.service.refresh_context()
        self.service.refresh_versions()
        self.page_batch.set_max_batch_size(self.settings.max_batch_size)
        self.page_batch.set_batch_wait_timeout_s(self.settings.batch_wait_s)
        self._stop = threading.Event()
        for name, every, refresh in (
            ("versions", self.settings.refresh_s, self.service.refresh_versions),
            ("context", self.settings.context_refresh_s, self.service.refresh_context),
        ):
            thread = threading.Thread(
                target=self._keep_refreshing, args=(every, refresh), name=name, daemon=True
            )
            thread.start()

    def _keep_refreshing(self, every: float, refresh: Any) -> None:
        while not self._stop.wait(every):
            try:
                refresh()
            except Exception:  # a bad read must not stop the refreshing for good
                log.exception("refresh failed; trying again in %.1f s", every)

    @api.post("/v1/page", response_model=PageResponse, response_model_exclude_none=True)
    async def page(self, request: PageRequest) -> PageResponse:
        """A page of k items for the user, from the version of their A/B variant."""
        return unwrap(await self.page_batch(request))

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.002)
    async def page_batch(self, requests: list[PageRequest]) -> list[PageResponse | RequestRefused]:
        # Generation runs on the event loop, blocking it: requests queue meanwhile and make the
        # next batch. Off the loop (asyncio.to_thread) the generation thread held the GIL so
        # much that the loop admitted one request per batch: 38 pages/s at 16 (Python) clients
        # against 74 this way.
        return self.service.pages(requests)

    @api.post("/v1/score", response_model=ScoreResponse)
    async def score(self, request: ScoreRequest) -> ScoreResponse:
        """R_c (page-level) and R_f (item-level) rewards of candidate pages for a user."""
        try:
            return await asyncio.to_thread(self.service.score, request)
        except RequestRefused as refused:
            raise HTTPException(refused.status, refused.detail) from None

    @api.get("/v1/health", response_model=Health)
    async def health(self) -> Health:
        return self.service.health()

    @api.get("/v1/versions", response_model=VersionsResponse)
    async def versions(self) -> VersionsResponse:
        return await asyncio.to_thread(self.service.versions)

    def __del__(self) -> None:
        stop = getattr(self, "_stop", None)
        if stop is not None:
            stop.set()
            left = self.service.close()
            if left:
                log.warning("%d impressions stay spooled for the next start", left)


def build_app(args: dict[str, Any]) -> serve.Application:
    """The page application, bound to its settings: ``ServingSettings`` and ``StreamSettings``
    from the environment (``PAGELLM_*``), overridden by ``args`` (a RayService's
    ``serveConfigV2`` imports ``serving.app:build_app`` and may pass its fields)."""
    unknown = set(args) - set(ServingSettings.model_fields) - set(StreamSettings.model_fields)
    if unknown:
        raise ValueError(f"args: unknown settings {sorted(unknown)}")
    serving = ServingSettings(
        **{k: v for k, v in args.items() if k in ServingSettings.model_fields}
    )
    streams = StreamSettings(**{k: v for k, v in args.items() if k in StreamSettings.model_fields})
    return PageDeployment.options(num_replicas=serving.replicas).bind(
        serving.model_dump(mode="json"), streams.model_dump(mode="json")
    )
