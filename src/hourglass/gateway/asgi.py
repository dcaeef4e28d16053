"""The ASGI plumbing the gateway's routes share: types, the capped body read,
and an answer with headers added (CORS)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from hourglass.exceptions import BodyTooLarge, InvalidInput

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
# A route: answers the request and returns its status (for the metrics).
Handler = Callable[[Scope, dict[str, str], Receive, Send], Awaitable[int]]


async def read_body(receive: Receive, headers: dict[str, str], limit: int) -> bytes:
    declared = headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge(f"body of {declared} bytes exceeds max_body_bytes ({limit})")
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise InvalidInput("client disconnected before sending the whole body")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge(f"body exceeds max_body_bytes ({limit})")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def adding(send: Send, extra: list[tuple[bytes, bytes]]) -> Send:
    """``send``, with ``extra`` headers on the answer."""

    async def adding(message: MutableMapping[str, Any]) -> None:
        if message["type"] == "http.response.start":
            message = {**message, "headers": [*message.get("headers", []), *extra]}
        await send(message)

    return adding
