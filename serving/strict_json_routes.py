"""The page API's routes read request bodies with ``schemas.strict_json.parse_json_strictly``:
a duplicated key, invalid UTF-8 or deep nesting is invalid JSON, so a 422 naming ``body`` like
any other, where FastAPI's parser served the last of two keys and answered the others with a
bare 400 ("There was an error parsing the body"). A body sent as anything but JSON gets a 415
naming its content type, where FastAPI validated it as a string ("body: Input should be a valid
dictionary"), which told the client nothing of what to change.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request, Response
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute

from schemas.strict_json import parse_json_strictly


def is_json_media_type(content_type: str) -> bool:
    """``application/json`` or any ``+json`` type, parameters (``; charset=...``) ignored."""
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or (
        media.startswith("application/") and media.endswith("+json")
    )


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
            sent_as = request.headers.get("content-type")
            if (
                self.body_field is not None
                and sent_as is not None
                and not is_json_media_type(sent_as)
            ):
                detail = (
                    f"content-type: {sent_as!r} is not accepted; send the body as application/json"
                )
                return JSONResponse(status_code=415, content={"detail": detail})
            return await handler(StrictJsonRequest(request.scope, request.receive))

        return strict
