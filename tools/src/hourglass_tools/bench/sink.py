"""The transport ceiling: uvicorn (httptools, uvloop) serving an ASGI app that
only reads the request body and answers 200, as the gateway is served.

``python -m hourglass_tools.bench.sink PORT ACCEPTED`` — every answer claims
``ACCEPTED`` events, so the load generator counts events as it does against
the gateway.
"""

from __future__ import annotations

import sys
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


def make_app(accepted: int) -> Callable[[Scope, Receive, Send], Awaitable[None]]:
    answer = b'{"accepted":%d,"rejected":[]}' % accepted
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(answer)).encode()),
    ]

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        more = True
        while more:
            message = await receive()
            more = bool(message.get("more_body", False))
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": answer})

    return app


def main(argv: list[str]) -> None:
    import uvicorn

    port, accepted = int(argv[0]), int(argv[1])
    uvicorn.run(
        make_app(accepted),
        host="127.0.0.1",
        port=port,
        http="httptools",
        loop="uvloop",
        lifespan="off",
        access_log=False,
        log_level="warning",
        timeout_keep_alive=30,
        server_header=False,
    )


if __name__ == "__main__":
    main(sys.argv[1:])
