"""NATS JetStream as the bus: stream layout, connection, and durable publish.

Layout (a contract with the loader):

* one stream per event type, ``HG_<type with . replaced by _>``, subject
  ``hg.ev.<type>``; each message is NDJSON of envelopes (see ``events.py``);
  gateways' watermark markers travel on the same subject, told apart by the
  ``Hg-Kind`` header;
* one failed-events stream ``HG_FAILED``, subjects ``hg.failed.>``.

Streams are file-backed with explicit limits and ``discard: new``: a full stream
refuses writes, which the gateway turns into 503, instead of deleting data that
was acknowledged.  Durability comes from the server: the embedded one runs with
``sync_interval: always``; an external cluster gets replicas=3.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig

from hourglass import log
from hourglass.bus.retention import RoomMaker
from hourglass.exceptions import BusError, BusUnavailable, ConfigError, HourglassError

logger = log.get("hourglass.bus")

FAILED_STREAM = "HG_FAILED"
FAILED_SUBJECT = "hg.failed"
MSG_ID = "Nats-Msg-Id"
KIND = "Hg-Kind"
TALLY = "Hg-Tally"


def format_tally(minutes: dict[int, int]) -> str | None:
    """``Hg-Tally``: events of a batch per receive minute, ``<minute>:<events>,...``.

    The gateway writes it on every batch and ``hourglass audit`` adds it up: the
    count of what was published, read from the bus without reading the events.
    """
    return ",".join(f"{m}:{n}" for m, n in sorted(minutes.items())) or None


def parse_tally(header: str | None) -> dict[int, int]:
    counts: dict[int, int] = {}
    for part in header.split(",") if header else ():
        minute, n = part.split(":")
        counts[int(minute)] = counts.get(int(minute), 0) + int(n)
    return counts


def stream_name(type_name: str) -> str:
    return "HG_" + type_name.replace(".", "_")


def subject(type_name: str) -> str:
    return "hg.ev." + type_name


@dataclass(frozen=True)
class StreamLimits:
    max_bytes: int
    max_age_s: int
    replicas: int
    duplicate_window_s: int
    max_msg_size: int


def stream_configs(types: Iterable[str], limits: StreamLimits) -> list[StreamConfig]:
    """The configuration of every stream Hourglass needs for ``types``."""
    names: dict[str, str] = {}
    wanted: list[tuple[str, list[str]]] = []
    for type_name in sorted(types):
        name = stream_name(type_name)
        if name in names:
            raise ConfigError(
                f"event types {names[name]!r} and {type_name!r} map to the same stream {name}"
            )
        names[name] = type_name
        wanted.append((name, [subject(type_name)]))
    wanted.append((FAILED_STREAM, [FAILED_SUBJECT + ".>"]))
    return [
        StreamConfig(
            name=name,
            subjects=subjects,
            retention=RetentionPolicy.LIMITS,
            discard=DiscardPolicy.NEW,
            storage=StorageType.FILE,
            max_bytes=limits.max_bytes,
            max_age=float(limits.max_age_s),
            max_msg_size=limits.max_msg_size,
            num_replicas=limits.replicas,
            duplicate_window=float(limits.duplicate_window_s),
        )
        for name, subjects in wanted
    ]


async def ensure_streams(js: JetStreamContext, configs: list[StreamConfig]) -> None:
    """Create missing streams and bring existing ones to the configured limits."""
    for config in configs:
        try:
            try:
                await js.stream_info(config.name)  # type: ignore[arg-type]
            except nats.js.errors.NotFoundError:
                await js.add_stream(config)
                logger.info("stream created", extra={"stream": config.name})
            else:
                await js.update_stream(config)
        except nats.js.errors.APIError as exc:
            raise BusError(f"stream {config.name}: {exc.description or exc}") from exc
        except (nats.errors.TimeoutError, nats.errors.NoRespondersError) as exc:
            raise BusUnavailable(
                f"stream {config.name}: JetStream did not answer ({exc!r})"
            ) from exc


async def connect(
    url: str,
    *,
    name: str,
    disconnected_cb: Callable[[], Awaitable[None]] | None = None,
    reconnected_cb: Callable[[], Awaitable[None]] | None = None,
) -> Client:
    """Connect, retrying until the bus answers; reconnects forever afterwards."""
    delay = 0.1
    while True:
        try:
            return await nats.connect(
                url.split(","),
                name=name,
                allow_reconnect=True,
                max_reconnect_attempts=-1,
                reconnect_time_wait=0.25,
                connect_timeout=2,
                ping_interval=5,
                max_outstanding_pings=2,
                error_cb=_on_error,
                disconnected_cb=disconnected_cb,
                reconnected_cb=reconnected_cb,
            )
        except (OSError, nats.errors.Error, asyncio.TimeoutError) as exc:
            logger.warning("bus not reachable, retrying", extra={"url": url, "error": repr(exc)})
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)


def stream_of_subject(subject_: str) -> str:
    """The stream a publish subject belongs to (the layout above)."""
    if subject_.startswith(FAILED_SUBJECT + "."):
        return FAILED_STREAM
    return stream_name(subject_.removeprefix("hg.ev."))


def _stream_full(exc: nats.js.errors.APIError) -> bool:
    return "maximum" in (exc.description or str(exc))


async def _on_error(exc: Exception) -> None:
    logger.warning("bus connection error", extra={"error": repr(exc)})


class JetStreamPublisher:
    """Publishes one bus message and waits for JetStream's acknowledgement.

    Every failure becomes :class:`BusUnavailable`: the caller has acknowledged
    nothing and answers 503, the client retries, and the loader's dedup removes a
    copy that did land after all.
    """

    def __init__(self, nc: Client, *, timeout: float) -> None:
        self._nc = nc
        self._js = nc.jetstream(timeout=timeout)
        self._timeout = timeout
        self._room = RoomMaker(self._js)

    @property
    def connected(self) -> bool:
        return bool(self._nc.is_connected)

    async def publish(
        self, subject: str, payload: bytes, msg_id: str, tally: str | None = None
    ) -> int:
        """Store one message; a stream full of consumed events is purged and tried again
        (``retention.py``): only unconsumed events fill a stream for good."""
        if not self._nc.is_connected:
            raise BusUnavailable("the bus is not connected", retry_after=1.0)
        headers = {MSG_ID: msg_id, KIND: "batch", **({TALLY: tally} if tally else {})}
        try:
            try:
                ack = await self._js.publish(
                    subject, payload, timeout=self._timeout, headers=headers
                )
            except nats.js.errors.APIError as exc:
                if not _stream_full(exc) or not await self._made_room(subject):
                    raise
                ack = await self._js.publish(
                    subject, payload, timeout=self._timeout, headers=headers
                )
        except nats.js.errors.APIError as exc:
            text = exc.description or str(exc)
            if _stream_full(exc) or "insufficient" in text or "storage" in text:
                raise BusUnavailable(
                    f"the bus refused the write ({text}): stream full or disk full",
                    retry_after=5.0,
                ) from exc
            raise BusUnavailable(f"the bus refused the write ({text})") from exc
        except (nats.errors.Error, asyncio.TimeoutError, OSError) as exc:
            raise BusUnavailable(f"no acknowledgement from the bus ({exc!r})") from exc
        return int(ack.seq)

    async def _made_room(self, subject_: str) -> bool:
        try:
            return await self._room.make_room(stream_of_subject(subject_))
        except HourglassError as exc:  # the write is refused as it would have been
            logger.warning("could not make room", extra={"subject": subject_, "error": str(exc)})
            return False
