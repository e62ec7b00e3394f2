"""A deadline on receiving a request's body, so that no client can hold a replica's slot.

A POST that declared a body and stopped sending it held one of a replica's
``max_ongoing_requests`` slots for as long as its connection stayed open: 300 such connections
took the page API down (every request timed out) while Ray's own health check still answered
success. The body must now arrive in full within ``seconds`` of the request's start; after
that the request gets 408 and its slot is free. Only the body is timed: once its last chunk is
in, later reads (a wait for the client to disconnect) are left alone.
"""

from __future__ import annotations

import asyncio

from fastapi import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send


class BodyDeadline:
    """ASGI middleware: a 408 for a body not received in full within ``seconds``."""

    def __init__(self, app: ASGIApp, seconds: float) -> None:
        self.app, self.seconds = app, seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        deadline = asyncio.get_running_loop().time() + self.seconds
        body_done = False

        async def receive_in_time() -> Message:
            nonlocal body_done
            if body_done:
                return await receive()
            try:
                async with asyncio.timeout_at(deadline):
                    message = await receive()
            except TimeoutError:
                # FastAPI passes an HTTPException raised while it reads the body through.
                raise HTTPException(
                    408, f"body: not received in full within {self.seconds:g} s"
                ) from None
            body_done = message["type"] != "http.request" or not message.get("more_body", False)
            return message

        await self.app(scope, receive_in_time, send)
