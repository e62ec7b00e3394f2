"""Catalogue items: what can be placed on a page."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, ValidationError

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
