"""The gateway's ASGI application: ``POST /v1/events``, the analytics SDKs'
endpoints (``analytics.py``, when on), CORS, and the operational endpoints.

Order of work for one request, and why it is safe:

1. check the API key, read the body (capped), undo its encoding (capped);
2. validate every event (``validate.py``); stamp ``received_at``;
3. hand each type's events, and every rejected event, to the group committer
   and wait until JetStream acknowledged all of them;
4. only then answer 200 with the accepted count and each rejection.

If step 3 fails for any part, the answer is 503 and the client resends the whole
request; parts that did land are removed downstream by ``(source, id)`` dedup.
A body that cannot be parsed at all is itself stored in the failed-events stream
before the 400 goes out.  No exception escapes as a crash: an unexpected one is
logged with its traceback and answered 500.  Segment's and Snowplow's requests
take the same steps, their calls turned into CloudEvents before step 2; each
route answers refusals in the form its clients read (``adapt.Style``).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from typing import Any, Protocol
from urllib.parse import unquote

import msgspec

from hourglass import log
from hourglass.bus.jetstream import FAILED_SUBJECT, partition_counts, partition_of, subject
from hourglass.config import Settings
from hourglass.events import EventTypes, FailedEvent, utcnow
from hourglass.exceptions import (
    BusUnavailable,
    InvalidInput,
    Overloaded,
    Retryable,
    Unauthorized,
    Unparseable,
)
from hourglass.gateway import segment, snowplow
from hourglass.gateway.adapt import CLOUDEVENTS, SEGMENT, SNOWPLOW, Converted, Style, answer, merge
from hourglass.gateway.analytics import SegmentRoute, SnowplowRoute
from hourglass.gateway.asgi import Handler, Receive, Scope, Send, adding, read_body
from hourglass.gateway.auth import ApiKeys
from hourglass.gateway.commit import GroupCommitter
from hourglass.gateway.cors import Cors
from hourglass.gateway.metrics import GatewayMetrics
from hourglass.gateway.openapi import openapi_document
from hourglass.gateway.segment import REFUSED
from hourglass.gateway.validate import Checked, Limits, Rejection, Validator
from hourglass.gateway.watermark import InFlight
from hourglass.gateway.wire import Mode, Payload, decompress, to_payload

logger = log.get("hourglass.gateway")

FAILED_EVENT_SUBJECT = FAILED_SUBJECT + ".event"
FAILED_BODY_SUBJECT = FAILED_SUBJECT + ".body"


class Readiness(Protocol):
    @property
    def ready(self) -> bool: ...


_JSON = [(b"content-type", b"application/json")]


class Gateway:
    def __init__(
        self,
        settings: Settings,
        types: EventTypes,
        committer: GroupCommitter,
        bus: Readiness,
        *,
        gateway_id: str,
        metrics: GatewayMetrics | None = None,
        keys: ApiKeys | None = None,
        stamps: InFlight | None = None,
    ) -> None:
        self.settings = settings
        self.types = types
        self.committer = committer
        self.bus = bus
        self.gateway_id = gateway_id
        self.metrics = metrics or GatewayMetrics()
        self.keys = keys
        self.stamps = stamps or InFlight()
        self.validator = Validator(
            types,
            Limits(
                settings.max_event_bytes,
                settings.max_events_per_request,
                {name: settings.max_event_bytes_of(name) for name in settings.types},
            ),
            frozenset(name for name, t in settings.types.items() if not t.enabled),
        )
        self.encoder = msgspec.json.Encoder()
        self.openapi = self.encoder.encode(openapi_document(types.registry))
        self.inflight = 0
        self.partitions = partition_counts(settings, types.registry.type_names)
        self.cors = Cors(settings.cors_origins)
        self.routes: dict[str, tuple[str, Handler, Style]] = {
            "/v1/events": ("POST", self._cloudevents, CLOUDEVENTS)
        }
        if settings.segment:
            api = segment.SegmentApi(types, settings)
            for path, call in segment.PATHS.items():
                self.routes[path] = ("POST", SegmentRoute(self, api, call), SEGMENT)
        if settings.snowplow:
            sp = SnowplowRoute(
                self, snowplow.SnowplowApi(settings.max_event_bytes_of(snowplow.TYPE))
            )
            self.routes[snowplow.TP2] = ("POST", sp, SNOWPLOW)
            self.routes[snowplow.PIXEL] = ("GET", sp, SNOWPLOW)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        path, method = scope["path"], scope["method"]
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        origin = headers.get("origin")
        route = self.routes.get(path)
        if origin is not None:
            if not self.cors.allows(origin):
                message = f"origin {origin} may not send here (cors_origins)"
                await self.error(send, 403, message, None, route[2] if route else None)
                return
            if method == "OPTIONS" and "access-control-request-method" in headers:
                await self.reply(send, 204, b"", self.cors.preflight(origin, headers))
                return
            send = adding(send, self.cors.simple(origin))
        if route is not None:
            allowed, handle, style = route
            if method != allowed:
                await self.error(
                    send, 405, f"use {allowed} here", [(b"allow", allowed.encode())], style
                )
                return
            await self._ingest(scope, headers, receive, send, handle, style)
        elif path in ("/healthz", "/readyz", "/metrics", "/openapi.json"):
            if method not in ("GET", "HEAD"):
                await self.error(send, 405, "use GET", [(b"allow", b"GET, HEAD")])
            elif path == "/openapi.json":
                await self.reply(send, 200, self.openapi)
            elif path == "/healthz":
                await self.reply(send, 200, b'{"status":"ok"}')
            elif path == "/readyz":
                ok = self.bus.ready
                body = b'{"status":"ready"}' if ok else b'{"status":"bus not ready"}'
                await self.reply(send, 200 if ok else 503, body)
            else:
                await self.reply(
                    send,
                    200,
                    self.metrics.render(),
                    [(b"content-type", b"text/plain; version=0.0.4; charset=utf-8")],
                )
        else:
            await self.error(send, 404, f"no such endpoint {path}; POST events to /v1/events")

    async def _ingest(
        self,
        scope: Scope,
        headers: dict[str, str],
        receive: Receive,
        send: Send,
        handle: Handler,
        style: Style,
    ) -> None:
        started = time.perf_counter()
        status = 500
        try:
            status = await handle(scope, headers, receive, send)
        except Retryable as exc:
            status = exc.status
            retry = str(max(1, round(exc.retry_after))).encode()
            await self.error(send, status, str(exc), [(b"retry-after", retry)], style)
        except (InvalidInput, Unauthorized) as exc:
            status = style.client_status(exc.status)
            await self.error(send, status, str(exc), None, style)
        except Exception:
            logger.exception("unexpected error while ingesting")
            await self.error(
                send, 500, "internal error; the request was not acknowledged", None, style
            )
        finally:
            self.metrics.requests.labels(str(status)).inc()
            self.metrics.request_seconds.observe(time.perf_counter() - started)

    async def _cloudevents(
        self, scope: Scope, headers: dict[str, str], receive: Receive, send: Send
    ) -> int:
        allowed = self.keys.allowed(headers) if self.keys is not None else None
        body, refused = await self.read_body(headers, receive, send, CLOUDEVENTS)
        if refused:
            return refused
        try:
            checked = self.validator.check(to_payload(body, headers.get("content-type"), headers))
        except Unparseable as exc:  # kept decompressed, readable
            return await self.keep_unparseable(exc, body, None, headers, send)
        await self.deliver(checked, allowed)
        await self.reply(send, 200, self.encoder.encode(answer(checked)))
        return 200

    async def read_body(
        self,
        headers: dict[str, str],
        receive: Receive,
        send: Send,
        style: Style,
        stored: bool = True,
    ) -> tuple[bytes, int]:
        """The request's body, decompressed; (b"", status) when it was refused
        (kept in the failed stream if ``stored``, else refused as unauthorized)."""
        limit = self.settings.max_body_bytes
        sent = await read_body(receive, headers, limit)
        encoding = headers.get("content-encoding", "").strip().lower()
        try:
            return decompress(sent, encoding, limit), 0
        except Unparseable as exc:  # kept as sent, with its encoding
            if not stored:
                raise Unauthorized("missing API key: send the write key", status=401) from exc
            return b"", await self.keep_unparseable(
                exc, sent, encoding or None, headers, send, style
            )

    def validated(self, converted: Converted, now: dt.datetime, data_name: str = "data") -> Checked:
        checked = None
        if converted.events:
            checked = self.validator.check(Payload(Mode.BATCH, converted.events), now)
        return merge(converted, checked, data_name)

    async def deliver(self, checked: Checked, allowed: frozenset[str] | None) -> None:
        """Make every event of ``checked`` durable on the bus, or raise (Retryable)."""
        if allowed is not None:
            # Unknown types are not a permission question: they are rejected per
            # event ("unknown event type") and kept, like any invalid event.
            known = self.types.by_name
            seen = list(checked.by_type) + [
                r.type for r in checked.rejected if r.type in known and r.code != REFUSED
            ]
            ApiKeys.check_types(allowed, seen)
        if self.inflight + checked.count > self.settings.max_inflight_events:
            raise Overloaded(
                f"gateway busy: {self.inflight} events in flight "
                f"(max_inflight_events {self.settings.max_inflight_events})",
                retry_after=1.0,
            )
        if not self.bus.ready:
            raise BusUnavailable("the bus is not ready", retry_after=1.0)
        # No await between the stamp (in check) and here: see watermark.py.
        stamp = _micros(checked.received_at)
        if stamp is not None:
            self.stamps.enter(stamp)
        self.inflight += checked.count
        self.metrics.inflight.set(self.inflight)
        try:
            await self._commit(checked)
        finally:
            self.inflight -= checked.count
            self.metrics.inflight.set(self.inflight)
            if stamp is not None:
                self.stamps.leave(stamp)
        for type_name, envelopes in checked.by_type.items():
            self.metrics.accepted.labels(type_name).inc(len(envelopes))
        for rejection in checked.rejected:
            self.metrics.rejected.labels(rejection.type or "", rejection.code).inc()

    async def _commit(self, checked: Checked) -> None:
        stamp = _micros(checked.received_at)
        minute = None if stamp is None else stamp // 60_000_000
        waits = [
            self.committer.commit(
                subject(name, partition), self.encoder.encode_lines(group), len(group), minute
            )
            for name, envelopes in checked.by_type.items()
            for partition, group in _by_partition(envelopes, self.partitions[name])
        ]
        if checked.rejected:
            records = [self._failed_record(r) for r in checked.rejected]
            lines = self.encoder.encode_lines(records)
            waits.append(self.committer.commit(FAILED_EVENT_SUBJECT, lines, len(records)))
        await asyncio.gather(*waits)

    def _failed_record(self, r: Rejection) -> FailedEvent:
        """The event verbatim, or as bytes when it is not Unicode text: the record
        itself must always be valid JSON text, or the loader could not read it."""
        return FailedEvent(
            received_at=utcnow(),
            reason=r.reason,
            status=200,
            gateway=self.gateway_id,
            index=r.index,
            id=r.id,
            source=r.source,
            type=r.type,
            event=r.raw if r.text else None,
            body=None if r.text else bytes(r.raw),
        )

    async def keep_unparseable(
        self,
        exc: InvalidInput,
        body: bytes,
        encoding: str | None,
        headers: dict[str, str],
        send: Send,
        style: Style | None = None,
    ) -> int:
        """Store an unparseable body (capped) in the failed stream, then answer 400.

        In binary mode the ``ce-*`` attributes are kept too, so the event can be
        identified and replayed.
        """
        cap = self.settings.failed_body_cap
        record = FailedEvent(
            received_at=utcnow(),
            reason=str(exc),
            status=400,
            gateway=self.gateway_id,
            id=_header(headers, "ce-id"),
            source=_header(headers, "ce-source"),
            type=_header(headers, "ce-type"),
            body=body[:cap],
            body_truncated=len(body) > cap,
            content_type=headers.get("content-type"),
            content_encoding=encoding,
        )
        line = self.encoder.encode(record) + b"\n"
        try:
            await self.committer.commit(FAILED_BODY_SUBJECT, line, 1)
        except Retryable as err:
            retry = str(max(1, round(err.retry_after))).encode()
            await self.error(
                send,
                503,
                f"{exc}; and it could not be stored: {err}",
                [(b"retry-after", retry)],
                style,
            )
            return 503
        self.metrics.rejected.labels("", "unparseable").inc()
        message = f"{exc} (the body was kept in the failed-events stream)"
        await self.error(send, 400, message, None, style)
        return 400

    async def reply(
        self,
        send: Send,
        status: int,
        body: bytes,
        headers: list[tuple[bytes, bytes]] | None = None,
    ) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": (headers or _JSON) + [(b"content-length", str(len(body)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": body})

    async def error(
        self,
        send: Send,
        status: int,
        message: str,
        extra: list[tuple[bytes, bytes]] | None = None,
        style: Style | None = None,
    ) -> None:
        style = style or CLOUDEVENTS
        body = style.body(self.encoder, status, message)
        await self.reply(send, style.client_status(status), body, _JSON + (extra or []))


def _header(headers: dict[str, str], name: str) -> str | None:
    value = headers.get(name)
    return None if value is None else unquote(value)  # as the binary binding encodes it


_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_MICRO = dt.timedelta(microseconds=1)


def _micros(ts: dt.datetime | None) -> int | None:
    return None if ts is None else (ts - _EPOCH) // _MICRO


def _by_partition(envelopes: list[Any], count: int) -> list[tuple[int | None, list[Any]]]:
    """A type's events of one request, split by partition (``bus/jetstream.py``);
    one partition: all of them, as they are (the common case costs nothing)."""
    if count == 1:
        return [(None, envelopes)]
    groups: dict[int, list[Any]] = {}
    for e in envelopes:
        groups.setdefault(partition_of(e.source, e.id, count), []).append(e)
    return sorted(groups.items())
