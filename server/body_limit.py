"""An ASGI wrapper that refuses request bodies above the upload limit with 413 and a JSON message.

A body whose declared Content-Length is above the limit never reaches the application; a chunked body is
counted as it arrives. Up to DRAIN_LIMIT bytes of an oversize body are read and dropped before the answer,
so that a client that is still sending gets the answer instead of a reset connection; a body larger than
that is answered at once and its connection closed.
"""
from __future__ import annotations

import json
from typing import Awaitable, Callable

from server.errors import PayloadTooLarge

Scope = dict
Message = dict
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]

DRAIN_LIMIT = 8 * 1024 * 1024  # bytes of an oversize body read and dropped before answering


class BodyTooLarge(PayloadTooLarge):
    """Raised inside `receive` when a body without a declared length grows past the limit; the application's
    SvcError handler answers it (413) while the request is still being read."""

    def __init__(self, max_bytes: int):
        super().__init__(limit_message(max_bytes))


class BodyLimit:
    def __init__(self, app: App, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = declared_length(scope)
        if declared is not None and declared > self.max_bytes:
            if declared - self.max_bytes <= DRAIN_LIMIT:
                await drain(receive, DRAIN_LIMIT)
            await self.refuse(send)
            return
        await self.run_counted(scope, receive, send)

    async def run_counted(self, scope: Scope, receive: Receive, send: Send) -> None:
        received = 0
        started = False

        async def counted_receive() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_bytes:
                if message.get("more_body", False):
                    await drain(receive, DRAIN_LIMIT)
                raise BodyTooLarge(self.max_bytes)
            return message

        async def tracked_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted_receive, tracked_send)
        except BodyTooLarge:
            if not started:
                await self.refuse(send)

    async def refuse(self, send: Send) -> None:
        body = json.dumps({"error": limit_message(self.max_bytes)}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})


def limit_message(max_bytes: int) -> str:
    return (f"the request is larger than this server's upload limit of {max_bytes / (1024 * 1024):g} MB "
            "(--max_upload_mb)")


def declared_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", []):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


async def drain(receive: Receive, limit: int) -> None:
    """Read and drop the rest of the body, up to `limit` bytes."""
    dropped = 0
    while dropped <= limit:
        message = await receive()
        dropped += len(message.get("body", b""))
        if message["type"] != "http.request" or not message.get("more_body", False):
            return
