"""The analytics SDKs' endpoints: Segment's HTTP API and Snowplow's tracker protocol.

Each route turns its protocol's request into CloudEvents (``segment.py``,
``snowplow.py``), then takes the gateway's one path for every event: the
validator, the group committer, and an answer only once JSON Stream holds
every event (``app.py``).  What differs is told apart here: where the key is,
what is a source, and the answer each protocol's clients read as intended.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TYPE_CHECKING

from hourglass.events import utcnow
from hourglass.exceptions import BodyTooLarge, Unauthorized, Unparseable
from hourglass.gateway import segment, snowplow
from hourglass.gateway.adapt import SEGMENT, SNOWPLOW, answer
from hourglass.gateway.asgi import Receive, Scope, Send
from hourglass.gateway.auth import ApiKeys, Key, presented

if TYPE_CHECKING:
    from hourglass.gateway.app import Gateway


class SegmentRoute:
    """``/v1/batch`` or one of the single-call paths (``call`` names its kind).

    The write key may be in the body (``writeKey``: analytics.js sends it there,
    as ``text/plain`` to spare the page a preflight), so without one in the
    headers the body is read before the key is checked; an unparseable body
    with no key in the headers is refused (401), not stored.
    """

    def __init__(self, gateway: Gateway, api: segment.SegmentApi, call: str | None) -> None:
        self.gateway = gateway
        self.api = api
        self.call = call

    async def __call__(
        self, scope: Scope, headers: dict[str, str], receive: Receive, send: Send
    ) -> int:
        gw = self.gateway
        keys = gw.keys
        key = presented(headers)
        entry: Key | None = keys.key(key) if keys is not None and key else None
        unknown = keys is not None and entry is None  # the key, if any, is in the body
        body, refused = await gw.read_body(headers, receive, send, SEGMENT, stored=not unknown)
        if refused:
            return refused
        try:
            parsed = self.api.parse(body, self.call)
        except (Unparseable, BodyTooLarge) as exc:  # kept: the SDKs drop a 4xx batch
            if unknown:
                raise Unauthorized("missing API key: send the write key", status=401) from exc
            return await gw.keep_unparseable(exc, body, None, headers, send, SEGMENT)
        if keys is not None and entry is None:
            entry = keys.key(parsed.write_key)
        source = entry.name if entry is not None else segment.NO_KEY_SOURCE
        now = utcnow()
        converted = self.api.convert(parsed, source, now, _may_send(entry))
        checked = gw.validated(converted, now, "properties")
        await gw.deliver(checked, entry.types if entry is not None else None)
        accepted = checked.count - len(checked.rejected)
        rejected = [{"index": r.index, "id": r.id, "reason": r.reason} for r in checked.rejected]
        reply = {"success": True, "accepted": accepted, "rejected": rejected}
        await gw.reply(send, 200, gw.encoder.encode(reply))
        return 200


class SnowplowRoute:
    """``POST /com.snowplowanalytics.snowplow/tp2``, or the ``GET /i`` pixel.

    Snowplow's collector protocol has no key: like Snowplow's own collector,
    these endpoints are open to whoever can reach them, and send only
    ``snowplow.events``.
    """

    def __init__(self, gateway: Gateway, api: snowplow.SnowplowApi) -> None:
        self.gateway = gateway
        self.api = api

    async def __call__(
        self, scope: Scope, headers: dict[str, str], receive: Receive, send: Send
    ) -> int:
        gw = self.gateway
        get = scope["method"] == "GET"
        if get:
            raws = self.api.parse_query(scope.get("query_string", b""))
        else:
            body, refused = await gw.read_body(headers, receive, send, SNOWPLOW)
            if refused:
                return refused
            try:
                raws = self.api.parse_post(body)
            except Unparseable as exc:
                return await gw.keep_unparseable(exc, body, None, headers, send, SNOWPLOW)
        now = utcnow()
        checked = gw.validated(self.api.convert(raws, headers.get("user-agent"), now), now)
        await gw.deliver(checked, None)
        if get:
            pixel = [(b"content-type", b"image/gif"), (b"cache-control", b"no-store")]
            await gw.reply(send, 200, snowplow.GIF, pixel)
        else:
            await gw.reply(send, 200, gw.encoder.encode(answer(checked)))
        return 200


def _may_send(entry: Key | None) -> Callable[[str], bool]:
    if entry is None:
        return lambda _: True
    return functools.partial(ApiKeys.permits, entry.types)
