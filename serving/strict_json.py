"""Request bodies read as JSON strictly: a duplicated key, invalid UTF-8 or nesting deeper than
the parser goes is invalid JSON, and so a 422 naming ``body`` like any other.

Python's ``json.loads`` keeps the last of duplicated keys: ``{"k": 200, "k": 3}`` was served as
k = 3, though 200 was never validated, and a client or proxy whose parser keeps the first reads
the same body as another request. Invalid UTF-8 and about 1,000 nesting levels raised errors
that FastAPI answers with a bare 400 ("There was an error parsing the body").
"""

from __future__ import annotations

import json
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request, Response
from fastapi.routing import APIRoute


class _DuplicateKey(ValueError):
    pass


def _refuse_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) < len(pairs):
        seen: set[str] = set()
        key = next(k for k, _ in pairs if k in seen or seen.add(k))  # type: ignore[func-returns-value]
        raise _DuplicateKey(f"the key {key!r} appears twice in one object")
    return obj


def parse_json_strictly(body: bytes) -> Any:
    """The JSON value of ``body``; ``json.JSONDecodeError`` (FastAPI's 422) for any body that is
    not UTF-8 JSON with distinct keys in each object."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise json.JSONDecodeError("not UTF-8", "", exc.start) from None
    try:
        return json.loads(text, object_pairs_hook=_refuse_duplicate_keys)
    except _DuplicateKey as exc:
        raise json.JSONDecodeError(str(exc), text, 0) from None
    except RecursionError:
        raise json.JSONDecodeError("nested too deeply", text, 0) from None


class StrictJsonRequest(Request):
    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            self._json = parse_json_strictly(await self.body())
        return self._json


class StrictJsonRoute(APIRoute):
    """A route whose endpoint reads its JSON body with ``parse_json_strictly``."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def strict(request: Request) -> Response:
            return await handler(StrictJsonRequest(request.scope, request.receive))

        return strict
