"""The Python SDK: hand an event to Hourglass and forget it.

``emit`` encodes a CloudEvent and appends it to the local spool (``spool.py``)
before returning; a background thread ships spooled events in batches and
advances the spool's cursor only after the gateway answered for them.  So an
emitted event survives a gateway outage, a kill -9 of the application, and (with
``fsync="always"``) a machine crash; after a restart a new ``Producer`` on the
same spool folder sends whatever was not acknowledged, with the same
``(source, id)``, and the lake keeps one copy.

Events the gateway rejects (schema violations) are reported to ``on_rejected``
and logged with the gateway's reason, then dropped from the spool: the gateway
keeps them in its failed-events stream, from where they can be replayed.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx
import msgspec

from hourglass import log
from hourglass.producer.http import Backoff, Encoding, Outcome, post_batch
from hourglass.producer.ids import sequence_stamp, uuid7
from hourglass.producer.spool import FsyncPolicy, Spool

logger = log.get("hourglass.producer")

RejectedCallback = Callable[[bytes, str], None]  # the event as sent, the gateway's reason


class _Event(msgspec.Struct, omit_defaults=True):
    specversion: str
    id: str
    source: str
    type: str
    time: dt.datetime | None
    data: Any


@dataclass
class Counters:
    spooled: int = 0
    sent: int = 0
    acknowledged: int = 0
    rejected: int = 0
    retries: int = 0
    spool_bytes: int = 0


def installation_source(spool_dir: Path) -> str:
    """A stable per-installation source: host name plus an id kept in the spool."""
    path = spool_dir / "producer-id"
    if not path.exists():
        spool_dir.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(secrets.token_hex(8))
        os.replace(tmp, path)
    return f"urn:hourglass:{socket.gethostname()}:{path.read_text().strip()}"


class Producer:
    """Thread-safe synchronous producer.  Use as a context manager or call ``close``."""

    def __init__(
        self,
        url: str = "http://127.0.0.1:8080",
        *,
        spool_dir: str | Path = "hourglass-spool",
        fsync: FsyncPolicy = "interval",
        fsync_interval_ms: float = 50.0,
        max_spool_bytes: int = 256 * 1024 * 1024,
        emit_timeout: float = 30.0,
        batch_max_events: int = 1000,
        batch_max_bytes: int = 1024 * 1024,
        linger_ms: float = 5.0,
        encoding: Encoding = "zstd",
        api_key: str | None = None,
        source: str | None = None,
        on_rejected: RejectedCallback | None = None,
        timeout: float = 10.0,
    ) -> None:
        self.spool_dir = Path(spool_dir)
        self.spool = Spool(
            self.spool_dir,
            fsync=fsync,
            fsync_interval_ms=fsync_interval_ms,
            max_bytes=max_spool_bytes,
        )
        self.source = source or installation_source(self.spool_dir)
        self.emit_timeout = emit_timeout
        self.batch_max_events = batch_max_events
        self.batch_max_bytes = batch_max_bytes
        self.linger = linger_ms / 1000
        self.encoding: Encoding = encoding
        self.on_rejected = on_rejected
        self.counters = Counters()
        self._encoder = msgspec.json.Encoder()
        # One session per opening of the spool: a copied spool folder never shares
        # its sequence numbers with the original under one name.
        self._session = secrets.token_hex(8)
        headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.Client(base_url=url, timeout=timeout, headers=headers)
        self._stop = threading.Event()
        self._sender = threading.Thread(
            target=self._send_loop, name="hourglass-sender", daemon=True
        )
        self._sender.start()

    # ------------------------------------------------------------------ API

    def emit(
        self,
        type: str,  # noqa: A002 - the CloudEvents attribute name
        data: Any,
        *,
        source: str | None = None,
        id: str | None = None,  # noqa: A002 - the CloudEvents attribute name
        time: dt.datetime | None = None,
    ) -> str:
        """Spool one event; returns its id.  Raises SpoolFull after ``emit_timeout``.

        An event whose id the SDK makes can only be duplicated by a re-send of its
        spool record, so it carries the record's sequence (``_stamp``) and the
        loader deduplicates it by that, at no cost per event.  One given an ``id``
        may be emitted twice by the application itself (that is what the id is
        for): it goes without, and the loader checks its ``(source, id)``."""
        event_id = id or str(uuid7())
        event = _Event(
            "1.0", event_id, source or self.source, type, time or dt.datetime.now(dt.UTC), data
        )
        body = self._encoder.encode(event)
        if id:
            self.spool.append(body, timeout=self.emit_timeout)
        else:  # the stamp takes the place of the closing brace
            self.spool.append(body[:-1], timeout=self.emit_timeout, stamp=self._stamp)
        self.counters.spooled += 1
        return event_id

    def _stamp(self, seq: int, cursor: int) -> bytes:
        """The sequence attributes (``events.py``), spliced before the event's
        closing brace: this session, the record's seq, the floor every record at or
        below which the gateway has answered."""
        return sequence_stamp(self._session, seq, cursor)

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every event emitted so far was answered by the gateway."""
        return self.spool.wait_acked(self.spool.next_seq - 1, timeout)

    def close(self, timeout: float | None = 10.0) -> None:
        """Flush up to ``timeout``, then stop; anything unsent stays in the spool."""
        self.flush(timeout)
        self._stop.set()
        self.spool.close()
        self._sender.join(timeout=5)
        self._http.close()

    def stats(self) -> Counters:
        self.counters.spool_bytes = self.spool.pending_bytes
        return self.counters

    def __enter__(self) -> Producer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # --------------------------------------------------------------- sender

    def _send_loop(self) -> None:
        while not self._stop.is_set():
            records = self.spool.read(self.batch_max_events, self.batch_max_bytes, wait=0.5)
            if not records:
                continue
            if len(records) < self.batch_max_events and self.linger:
                time.sleep(self.linger)  # let a burst fill the batch
                records += self.spool.read(
                    self.batch_max_events - len(records), self.batch_max_bytes, wait=0
                )
            if self._deliver([r[1] for r in records]):
                self.spool.ack(records[-1][0], sum(len(r[1]) + 8 for r in records))

    def _deliver(self, events: list[bytes]) -> bool:
        """Send until the gateway has answered for every event; False only when stopping."""
        backoff = Backoff()
        while True:
            outcome = post_batch(self._http, events, encoding=self.encoding)
            self.counters.sent += len(events)
            if outcome.kind == "done":
                self._settle(events, outcome)
                return True
            if outcome.kind == "too_large" and len(events) > 1:
                half = len(events) // 2
                return self._deliver(events[:half]) and self._deliver(events[half:])
            if outcome.kind in ("too_large", "refused"):
                for event in events:
                    self._reject(event, f"{outcome.status}: {outcome.reason}")
                return True
            self.counters.retries += 1
            delay = backoff.next_delay(outcome.retry_after)
            logger.warning(
                "gateway did not take the batch; retrying",
                extra={
                    "status": outcome.status,
                    "reason": outcome.reason,
                    "events": len(events),
                    "retry_in_s": round(delay, 2),
                },
            )
            if self._stop.wait(delay):
                return False

    def _settle(self, events: list[bytes], outcome: Outcome) -> None:
        self.counters.acknowledged += outcome.accepted
        for rejection in outcome.rejected:
            if 0 <= rejection.index < len(events):
                self._reject(events[rejection.index], rejection.reason)

    def _reject(self, event: bytes, reason: str) -> None:
        self.counters.rejected += 1
        logger.warning("event rejected by the gateway", extra={"reason": reason})
        if self.on_rejected is not None:
            try:
                self.on_rejected(event, reason)
            except Exception:
                logger.exception("on_rejected callback failed")


class AsyncProducer:
    """The asyncio face of :class:`Producer`: same spool and sender, awaitable calls."""

    def __init__(self, url: str = "http://127.0.0.1:8080", **options: Any) -> None:
        self._producer = Producer(url, **options)

    async def emit(self, type: str, data: Any, **attributes: Any) -> str:  # noqa: A002
        return await asyncio.to_thread(self._producer.emit, type, data, **attributes)

    async def flush(self, timeout: float | None = None) -> bool:
        return await asyncio.to_thread(self._producer.flush, timeout)

    async def close(self, timeout: float | None = 10.0) -> None:
        await asyncio.to_thread(self._producer.close, timeout)

    def stats(self) -> Counters:
        return self._producer.stats()

    async def __aenter__(self) -> AsyncProducer:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
