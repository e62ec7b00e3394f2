"""Feedback events on the wire: impressions, clicks, purchases and ratings.

Every event is one JSON object whose ``type`` selects its model. Validation is strict: unknown
fields, wrong types, negative money or quantities, ratings outside 1-5 and timestamps beyond the
allowed clock skew are rejected with the field and the reason (see ``parse_event``).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Annotated, Literal

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    field_validator,
)

from schemas.strict_json import check_distinct_keys

SCHEMA_VERSION = 1
DEFAULT_MAX_CLOCK_SKEW = timedelta(minutes=5)
# Feedback older than the Unix epoch is a clock or encoding error; and an offset can move a
# timestamp of year 1 to year 0 in UTC, which the store's readers cannot hold.
EARLIEST_TS = datetime(1970, 1, 1, tzinfo=UTC)

Identifier = Annotated[
    str, Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:\-]*$")
]
Position = Annotated[int, Field(ge=1, le=1000, description="1-based slot on the page")]
Money = Annotated[Decimal, Field(ge=0, max_digits=18, decimal_places=4)]
MONEY_MAX = Decimal("99999999999999.9999")  # the largest Money: the store's DECIMAL(18, 4)


class _Event(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    event_id: Identifier
    user_id: Identifier
    session_id: Identifier
    ts: AwareDatetime = Field(description="when it happened; ISO-8601 with a UTC offset")
    schema_version: Literal[1] = SCHEMA_VERSION

    @field_validator("schema_version", mode="before")
    @classmethod
    def _version_is_a_number(cls, value: object) -> object:
        # The literal 1 also matches True, which strictness does not catch here.
        if isinstance(value, bool):
            raise ValueError("a number, not a boolean")
        return value

    @field_validator("ts", mode="before")
    @classmethod
    def _parse_iso(cls, value: object) -> object:
        # Strict mode refuses strings for datetimes, but JSON has no datetime type.
        if isinstance(value, str):
            try:
                return datetime.fromisoformat(value)
            except ValueError as exc:
                raise ValueError(f"not an ISO-8601 timestamp ({exc})") from exc
        return value

    @field_validator("ts")
    @classmethod
    def _within_bounds(cls, value: datetime, info: ValidationInfo) -> datetime:
        if value < EARLIEST_TS:
            raise ValueError(f"timestamp is before {EARLIEST_TS.isoformat()} (the Unix epoch)")
        context = info.context or {}
        now: datetime = context.get("now") or datetime.now(UTC)
        skew: timedelta = context.get("max_clock_skew", DEFAULT_MAX_CLOCK_SKEW)
        if value - now > skew:
            raise ValueError(
                f"timestamp is {(value - now).total_seconds():.0f} s in the future "
                f"(allowed clock skew {skew.total_seconds():.0f} s)"
            )
        return value


class PageSlot(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    item_id: Identifier
    position: Position


class Impression(_Event):
    """A page of items shown to a user by one model version."""

    type: Literal["impression"]
    request_id: Identifier
    items: list[PageSlot] = Field(min_length=1, max_length=1000)
    model_version: Identifier
    experiment: Identifier | None = None
    variant: Identifier | None = Field(None, validate_default=True)  # checked with experiment

    # Field validators, not a model validator, so that the reason names its field.
    @field_validator("items")
    @classmethod
    def _distinct_positions(cls, items: list[PageSlot]) -> list[PageSlot]:
        positions = [slot.position for slot in items]
        if len(set(positions)) != len(positions):
            raise ValueError("two slots share a position")
        return items

    @field_validator("variant")
    @classmethod
    def _with_its_experiment(cls, variant: str | None, info: ValidationInfo) -> str | None:
        if "experiment" in info.data and (info.data["experiment"] is None) != (variant is None):
            raise ValueError("give experiment and variant both or neither")
        return variant


class Click(_Event):
    """A click on an item of an impressed page."""

    type: Literal["click"]
    request_id: Identifier
    item_id: Identifier
    position: Position


class Purchase(_Event):
    """A purchase; its GMV is quantity x unit price in its currency."""

    type: Literal["purchase"]
    item_id: Identifier
    quantity: int = Field(ge=1, le=1_000_000)
    unit_price: Money
    currency: str = Field(pattern=r"^[A-Z]{3}$", description="ISO-4217 code")
    request_id: Identifier | None = None

    @field_validator("unit_price", mode="before")
    @classmethod
    def _money_from_json(cls, value: object) -> object:
        # JSON numbers arrive as int/float; go through str so 19.99 stays exactly 19.99.
        if isinstance(value, int | float) and not isinstance(value, bool):
            return Decimal(str(value))
        if isinstance(value, str):
            try:
                return Decimal(value)
            except ArithmeticError as exc:
                raise ValueError("not a decimal number") from exc
        return value

    @field_validator("unit_price")
    @classmethod
    def _gmv_fits(cls, value: Decimal, info: ValidationInfo) -> Decimal:
        quantity = info.data.get("quantity")  # validated before unit_price, when valid
        if isinstance(quantity, int) and quantity * value > MONEY_MAX:
            raise ValueError(
                f"quantity x unit_price = {quantity * value} exceeds the largest GMV the "
                f"store holds ({MONEY_MAX})"
            )
        return value

    @property
    def gmv(self) -> Decimal:
        """GMV = quantity * unit_price."""
        return self.quantity * self.unit_price


class Rating(_Event):
    """Explicit feedback: a 1-5 star rating of an item."""

    type: Literal["rating"]
    item_id: Identifier
    rating: int = Field(ge=1, le=5)


FeedbackEvent = Annotated[Impression | Click | Purchase | Rating, Field(discriminator="type")]
EVENT_TYPES: tuple[str, ...] = ("impression", "click", "purchase", "rating")

_FEEDBACK_ADAPTER: TypeAdapter[Impression | Click | Purchase | Rating] = TypeAdapter(FeedbackEvent)


class InvalidEvent(ValueError):
    """An event that fails validation; ``reason`` names each offending field and why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


_TAG_ERRORS = {"union_tag_invalid", "union_tag_not_found"}


def describe_validation_error(exc: ValidationError) -> str:
    """Render pydantic errors as 'field.path: reason; ...' (the tag of the union stripped)."""
    parts = []
    for error in exc.errors(include_url=False, include_input=False):
        loc = [str(p) for p in error["loc"]]
        if loc and loc[0] in EVENT_TYPES:
            loc = loc[1:]
        if error["type"] in _TAG_ERRORS:  # the union's tag is the type field
            loc = ["type"]
        field = ".".join(loc) or "event"
        message = error["msg"].removeprefix("Value error, ")
        parts.append(f"{field}: {message}")
    return "; ".join(parts)


def parse_event(
    raw: bytes | str,
    *,
    now: datetime | None = None,
    max_clock_skew: timedelta = DEFAULT_MAX_CLOCK_SKEW,
) -> Impression | Click | Purchase | Rating:
    """Validate one JSON event; raise ``InvalidEvent`` naming the field and the reason."""
    try:
        event = _FEEDBACK_ADAPTER.validate_json(
            raw, context={"now": now, "max_clock_skew": max_clock_skew}
        )
        check_distinct_keys(raw if isinstance(raw, bytes) else raw.encode(), event)
    except ValidationError as exc:
        raise InvalidEvent(describe_validation_error(exc)) from None
    except json.JSONDecodeError as exc:
        raise InvalidEvent(f"event: {exc.msg}") from None
    return event


def event_to_json(event: Impression | Click | Purchase | Rating) -> bytes:
    """The wire form of an event (what ``parse_event`` reads back)."""
    return event.model_dump_json(exclude_none=True).encode()
