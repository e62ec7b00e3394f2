"""The page API's routes read request bodies with ``schemas.strict_json.parse_json_strictly``:
a duplicated key, invalid UTF-8 or deep nesting is invalid JSON, so a 422 naming ``body`` like
any other, where FastAPI's parser served the last of two keys and answered the others with a
bare 400 ("There was an error parsing the body").
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request, Response
from fastapi.routing import APIRoute

from schemas.strict_json import parse_json_strictly


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
