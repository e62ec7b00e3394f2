"""Typed contracts shared by every package: the ground floor, importing nothing of ours."""

from schemas.catalogue import CatalogueItem, parse_catalogue_deletion, parse_catalogue_item
from schemas.events import (
    EVENT_TYPES,
    SCHEMA_VERSION,
    Click,
    FeedbackEvent,
    Impression,
    InvalidEvent,
    PageSlot,
    Purchase,
    Rating,
    event_to_json,
    parse_event,
)

__all__ = [
    "EVENT_TYPES",
    "SCHEMA_VERSION",
    "CatalogueItem",
    "Click",
    "FeedbackEvent",
    "Impression",
    "InvalidEvent",
    "PageSlot",
    "Purchase",
    "Rating",
    "event_to_json",
    "parse_catalogue_deletion",
    "parse_catalogue_item",
    "parse_event",
]
