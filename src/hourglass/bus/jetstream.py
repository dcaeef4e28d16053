"""NATS JetStream as the bus: stream layout, connection, and durable publish.

Layout (a contract with the loader):

* one stream per event type, ``HG_<type with . replaced by _>``, subject
  ``hg.ev.<type>``; each message is NDJSON of envelopes (see ``events.py``);
  gateways' watermark markers travel on the same subject, told apart by the
  ``Hg-Kind`` header;
* or, for a type of P > 1 partitions, P streams ``HG_<type>-<p>``, subjects
  ``hg.ev.<type>.<p>``, an event in partition :func:`partition_of` its
  ``(source, id)`` (so every copy meets the same dedup state), markers into each,
  the type's byte budget (its own ``types.<type>.stream_max_bytes``, else
  ``stream_max_bytes``) shared evenly; the streams record P in their metadata
  and a different P for a type that has streams is refused (:func:`check_layout`):
  moving events between partitions would break dedup and the close;
* one failed-events stream ``HG_FAILED``, subjects ``hg.failed.>``.

Streams are file-backed with explicit limits and ``discard: new``: a full stream
refuses writes, which the gateway turns into 503, instead of deleting data that
was acknowledged.  Durability comes from the server: the embedded one runs with
``sync_interval: always``; an external cluster gets replicas=3.
"""

from __future__ import annotations

import asyncio
import re
import zlib
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig

from hourglass import log
from hourglass.bus.retention import RoomMaker
from hourglass.config import Settings
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


PARTITIONS_KEY = "hourglass_partitions"  # in a partition stream's metadata: P


def stream_name(type_name: str, partition: int | None = None) -> str:
    """``partition`` None: a type of one partition (its one stream)."""
    base = "HG_" + type_name.replace(".", "_")
    return base if partition is None else f"{base}-{partition}"


def subject(type_name: str, partition: int | None = None) -> str:
    base = "hg.ev." + type_name
    return base if partition is None else f"{base}.{partition}"


def partitions(count: int) -> list[int | None]:
    """The partition indexes of a type of ``count`` partitions (``[None]`` for one)."""
    return [None] if count == 1 else list(range(count))


def subjects(type_name: str, count: int) -> list[str]:
    return [subject(type_name, p) for p in partitions(count)]


def partition_of(source: str, event_id: str, count: int) -> int:
    """The partition of an event: CRC-32 (zlib's) of its dedup key
    ``<bytes in source>:<source>:<id>`` (UTF-8), mod ``count``.  A contract: every
    gateway, of any version, must send an event's copies to the same partition."""
    s = source.encode()
    return zlib.crc32(b"%d:%b:%b" % (len(s), s, event_id.encode())) % count


def partition_counts(settings: Settings, type_names: Sequence[str]) -> dict[str, int]:
    """Each type's partitions; a ``type_partitions`` entry of no known type is refused."""
    unknown = sorted(set(settings.type_partitions) - set(type_names))
    if unknown:
        raise ConfigError(
            f"type_partitions names unknown types {unknown}; known: {sorted(type_names)[:10]}"
        )
    return {t: settings.partitions_of(t) for t in type_names}


@dataclass(frozen=True)
class StreamLimits:
    max_bytes: int  # a type's budget, and the failed stream's
    max_age_s: int
    replicas: int
    duplicate_window_s: int
    max_msg_size: int
    # Types' own budgets (``Settings.stream_max_bytes_of``), by type name.
    type_max_bytes: Mapping[str, int] = field(default_factory=dict)


def stream_configs(
    types: Mapping[str, int] | Iterable[str], limits: StreamLimits
) -> list[StreamConfig]:
    """The configuration of every stream Hourglass needs for ``types`` (with their
    partitions; a plain iterable: one each)."""
    counts = dict(types) if isinstance(types, Mapping) else dict.fromkeys(types, 1)
    names: dict[str, str] = {}
    wanted: list[tuple[str, list[str], int, int]] = []  # name, subjects, partitions, budget
    for type_name in sorted(counts):
        name = stream_name(type_name)
        if name in names:
            raise ConfigError(
                f"event types {names[name]!r} and {type_name!r} map to the same stream {name}"
            )
        names[name] = type_name
        count = counts[type_name]
        budget = limits.type_max_bytes.get(type_name, limits.max_bytes)
        wanted += [
            (stream_name(type_name, p), [subject(type_name, p)], count, budget)
            for p in partitions(count)
        ]
    wanted.append((FAILED_STREAM, [FAILED_SUBJECT + ".>"], 1, limits.max_bytes))
    return [
        StreamConfig(
            name=name,
            subjects=subjects_,
            retention=RetentionPolicy.LIMITS,
            discard=DiscardPolicy.NEW,
            storage=StorageType.FILE,
            max_bytes=budget // count,
            max_age=float(limits.max_age_s),
            max_msg_size=limits.max_msg_size,
            num_replicas=limits.replicas,
            duplicate_window=float(limits.duplicate_window_s),
            metadata={PARTITIONS_KEY: str(count)} if count > 1 else None,
        )
        for name, subjects_, count, budget in wanted
    ]


_PARTITION_STREAM = re.compile(r"^(.*)-(\d+)$")


def check_layout(existing: Iterable[str], types: Mapping[str, int]) -> None:
    """Refuse partitions that differ from those a type's streams already have
    (``existing``: the bus's stream names)."""
    found: dict[str, set[str]] = {}
    bases = {stream_name(t): t for t in types}
    for name in existing:
        match = _PARTITION_STREAM.match(name)
        base = match.group(1) if match else name
        if base in bases:
            found.setdefault(bases[base], set()).add(name)
    for type_name, names in sorted(found.items()):
        count = types[type_name]
        wanted = {stream_name(type_name, p) for p in partitions(count)}
        if names != wanted:
            has = len(names) if any(_PARTITION_STREAM.match(n) for n in names) else 1
            raise ConfigError(
                f"{type_name} has {has} partition(s) on the bus ({', '.join(sorted(names))}), "
                f"the settings say {count}: the partitions of a type cannot change once it "
                f"has streams. Set its partitions (types.{type_name}.partitions or "
                f"type_partitions) back to {has}, or drain its "
                "streams into the lake and delete them first (docs/deploy.md)"
            )


async def ensure_streams(
    js: JetStreamContext, configs: list[StreamConfig], types: Mapping[str, int] | None = None
) -> None:
    """Create missing streams and bring existing ones to the configured limits;
    ``types``: each type's partitions, checked against the streams there first."""
    if types is not None:
        check_layout(await stream_names(js), types)
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


async def stream_names(js: JetStreamContext) -> list[str]:
    """Every stream's name (the list API answers in pages)."""
    names: list[str] = []
    try:
        while page := await js.streams_info(offset=len(names)):
            names += [info.config.name or "" for info in page]
    except nats.js.errors.APIError as exc:
        raise BusError(f"listing streams: {exc.description or exc}") from exc
    except (nats.errors.TimeoutError, nats.errors.NoRespondersError) as exc:
        raise BusUnavailable(f"listing streams: JetStream did not answer ({exc!r})") from exc
    return names


async def first_stored(js: JetStreamContext, streams: Iterable[str]) -> float | None:
    """When the oldest message of any of ``streams`` was stored (epoch s, the
    server's clock); None if all are empty.  Every event in them was stamped
    (``received_at``) no more than a publish timeout before it was stored."""
    first: float | None = None
    try:
        for name in streams:
            info = await js.stream_info(name)
            if not info.state.messages:
                continue
            msg = await js.get_msg(name, seq=info.state.first_seq, next=True)
            if msg.time is not None:
                t = msg.time.timestamp()
                first = t if first is None else min(first, t)
    except nats.js.errors.APIError as exc:
        raise BusError(f"reading the first messages: {exc.description or exc}") from exc
    except (nats.errors.TimeoutError, nats.errors.NoRespondersError) as exc:
        raise BusUnavailable(f"reading the first messages: no answer ({exc!r})") from exc
    return first


def stream_of_subject(subject_: str) -> str:
    """The stream a publish subject belongs to (the layout above: a type's name
    never has a token of digits alone, a partition's number is one)."""
    if subject_.startswith(FAILED_SUBJECT + "."):
        return FAILED_STREAM
    type_name, _, last = subject_.removeprefix("hg.ev.").rpartition(".")
    if type_name and last.isdigit():
        return stream_name(type_name, int(last))
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
