"""What the feedback stream becomes for the learner: prompts, golden lists, preference pairs."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from schemas.events import Identifier

PairFamily = Literal["np", "rk", "d", "rd"]
PAIR_FAMILIES: tuple[PairFamily, ...] = ("np", "rk", "d", "rd")


class EffectiveRating(BaseModel):
    """A user's rating of an item, explicit or derived from implicit feedback."""

    model_config = ConfigDict(frozen=True)

    user_id: Identifier
    item_id: Identifier
    rating: int = Field(ge=1, le=5)
    ts: datetime = Field(description="when the deciding signal happened")
    explicit: bool


class UserPrompt(BaseModel):
    """The prompt q_u: the user and their most recent positives, oldest first."""

    model_config = ConfigDict(frozen=True)

    user_id: Identifier
    items: tuple[str, ...]


class GoldenList(BaseModel):
    """sigma_u^gt: the user's unseen positives, ranked, with the category cap applied."""

    model_config = ConfigDict(frozen=True)

    user_id: Identifier
    items: tuple[str, ...]
    cap_relaxed: bool = Field(
        False, description="the candidates could not fill the list within the category cap"
    )


class PreferencePair(BaseModel):
    """One (chosen, rejected) pair of one family; chosen is the golden list."""

    model_config = ConfigDict(frozen=True)

    user_id: Identifier
    family: PairFamily
    chosen: tuple[str, ...]
    rejected: tuple[str, ...]
