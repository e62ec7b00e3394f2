"""Catalogue items: what can be placed on a page, and deletions of them.

The catalogue topic is keyed by item id. A record with a value is the item as it is now; a
record with a null value (Kafka's tombstone, which log compaction also reads as a delete) takes
the item its key names out of the catalogue: no page offers it from then on.
"""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from schemas.events import Identifier, InvalidEvent, describe_validation_error
from schemas.strict_json import check_distinct_keys


class CatalogueItem(BaseModel):
    """One item of the catalogue; brand and price are unknown for some datasets."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    item_id: Identifier
    category: Annotated[str, Field(min_length=1, max_length=200)]
    title: Annotated[str, Field(max_length=1000)] = ""
    brand: Annotated[str, Field(min_length=1, max_length=200)] | None = None
    price: Annotated[Decimal, Field(ge=0, max_digits=18, decimal_places=4)] | None = None


def parse_catalogue_item(raw: bytes | str) -> CatalogueItem:
    """Validate one JSON catalogue item; raise ``InvalidEvent`` naming the field and reason."""
    try:
        item = CatalogueItem.model_validate_json(raw)
        check_distinct_keys(raw if isinstance(raw, bytes) else raw.encode(), item)
    except ValidationError as exc:
        raise InvalidEvent(describe_validation_error(exc)) from None
    except json.JSONDecodeError as exc:
        raise InvalidEvent(f"event: {exc.msg}") from None
    return item


_ITEM_ID = TypeAdapter(Identifier)


def parse_catalogue_deletion(key: bytes | None) -> str:
    """The item id a catalogue tombstone's key names; raise ``InvalidEvent`` if it names none."""
    if key is None:
        raise InvalidEvent("key: missing; a catalogue deletion is keyed by the item_id it deletes")
    try:
        return _ITEM_ID.validate_python(key.decode("utf-8"))
    except (UnicodeDecodeError, ValidationError) as exc:
        why = exc.errors()[0]["msg"] if isinstance(exc, ValidationError) else "not UTF-8"
        raise InvalidEvent(f"key: a catalogue deletion's key must be an item_id ({why})") from None
