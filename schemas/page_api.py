"""The serving API's requests and answers: what a client sends and what it gets back.

Validation is strict, so a bad request is refused (422) with the field and the reason rather than
guessed at: a ``k`` of "10" is not 10, unknown fields are errors.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, model_validator

from schemas.events import Identifier, PageSlot

MAX_PAGE_SIZE = 100
MAX_EXCLUDED = 1000
MAX_SCORED_PAGES = 100


class PageRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    user_id: Identifier
    session_id: Identifier | None = Field(None, description="default: one session per request")
    k: int = Field(10, ge=1, le=MAX_PAGE_SIZE, description="items on the page")
    exclude: Annotated[list[Identifier], Field(max_length=MAX_EXCLUDED)] = Field(
        default_factory=list, description="items the page must not hold"
    )


class PageResponse(BaseModel):
    request_id: str
    items: list[PageSlot]
    model_version: str
    experiment: str | None = None
    variant: str | None = None
    fallback_reason: str | None = Field(
        None, description="why the page did not come from the routed version's policy"
    )


class ScoreRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    user_id: Identifier
    pages: Annotated[
        list[Annotated[list[Identifier], Field(min_length=1, max_length=MAX_PAGE_SIZE)]],
        Field(min_length=1, max_length=MAX_SCORED_PAGES),
    ]

    @model_validator(mode="after")
    def _no_repeats(self) -> ScoreRequest:
        for n, page in enumerate(self.pages):
            if len(set(page)) != len(page):
                raise ValueError(f"pages.{n}: an item appears twice on the page")
        return self


class PageScore(BaseModel):
    page_reward: float = Field(description="R_c, the page-level reward")
    item_reward: float = Field(description="R_f, the mean item-level reward")


class ScoreResponse(BaseModel):
    model_version: str
    experiment: str | None = None
    variant: str | None = None
    scores: list[PageScore]


class LiveVersion(BaseModel):
    version: str
    kind: str
    status: str
    serves: list[str] = Field(description="'production', or 'experiment/variant' it serves")
    loaded_at: str


class VersionsResponse(BaseModel):
    production: str | None
    versions: list[LiveVersion]
    loading: list[str] = Field(description="versions named by routing but not ready yet")
    failed: dict[str, str] = Field(description="versions that could not load, and why")


class SpoolHealth(BaseModel):
    pending: int = Field(description="impressions on disk not yet acknowledged by Kafka")
    bound: int = Field(description="the spool's capacity in impressions")
    dropped: int = Field(description="impressions refused because the spool was full")
    delivered: int
    kafka_connected: bool


class Health(BaseModel):
    status: str = Field(description="'ok', or 'degraded' with the reasons")
    reasons: list[str]
    production: str | None
    live_versions: list[str]
    impressions: SpoolHealth
