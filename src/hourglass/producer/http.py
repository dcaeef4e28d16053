"""Posting a batch to the gateway, and what its answer means for the sender.

Every producer (the SDK's sender, the file tailer, ``hourglass send``) goes
through :func:`post_batch`, so they agree on what is final and what is retried:

* 200: each event is either accepted (durable) or rejected with a reason (kept
  in the failed-events stream by the gateway) — both are final;
* 400, 413, 415: the batch itself is wrong and resending it cannot help; 413 is
  retried by the caller in smaller pieces;
* 401/403: a configuration problem — retried, never dropped, so fixing the key
  delivers the events;
* 429, 503, any 5xx, a timeout or a refused connection: retry after
  ``Retry-After`` or a backoff.
"""

from __future__ import annotations

import gzip
import random
from dataclasses import dataclass, field
from typing import Literal

import httpx
import msgspec
import zstandard

from hourglass.protocol import BATCH, IngestResponse, Rejected

Encoding = Literal["gzip", "zstd", "identity"]

_ZSTD = zstandard.ZstdCompressor(level=3)


@dataclass
class Outcome:
    """What happened to one POST."""

    kind: Literal["done", "retry", "too_large", "refused"]
    accepted: int = 0
    rejected: list[Rejected] = field(default_factory=list)
    status: int | None = None
    reason: str = ""
    retry_after: float | None = None


_answer = msgspec.json.Decoder(IngestResponse)


def encode_body(events: list[bytes], encoding: Encoding) -> bytes:
    """A JSON array from already-encoded events, compressed as asked."""
    body = b"[" + b",".join(events) + b"]"
    if encoding == "gzip":
        return gzip.compress(body, compresslevel=5)
    if encoding == "zstd":
        return _ZSTD.compress(body)
    return body


def post_batch(
    client: httpx.Client,
    events: list[bytes],
    *,
    encoding: Encoding = "zstd",
    headers: dict[str, str] | None = None,
) -> Outcome:
    """POST ``events`` (each one encoded CloudEvent) and classify the answer."""
    request_headers = {"content-type": BATCH, **(headers or {})}
    if encoding != "identity":
        request_headers["content-encoding"] = encoding
    try:
        response = client.post(
            "/v1/events", content=encode_body(events, encoding), headers=request_headers
        )
    except httpx.HTTPError as exc:
        return Outcome("retry", reason=f"gateway unreachable: {exc!r}")
    return classify(response)


def classify(response: httpx.Response) -> Outcome:
    status = response.status_code
    if status == 200:
        try:
            answer = _answer.decode(response.content)
        except msgspec.DecodeError:
            return Outcome("retry", status=status, reason="unreadable 200 answer")
        return Outcome("done", answer.accepted, answer.rejected, status=status)
    reason = _error_text(response)
    if status == 413:
        return Outcome("too_large", status=status, reason=reason)
    if status in (400, 415):
        return Outcome("refused", status=status, reason=reason)
    return Outcome("retry", status=status, reason=reason, retry_after=_retry_after(response))


def _error_text(response: httpx.Response) -> str:
    try:
        return str(response.json().get("error", response.text))
    except ValueError:
        return response.text[:500]


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


class Backoff:
    """Exponential backoff with full jitter; ``Retry-After`` wins when given."""

    def __init__(self, base: float = 0.1, cap: float = 30.0) -> None:
        self.base = base
        self.cap = cap
        self.attempt = 0

    def next_delay(self, retry_after: float | None = None) -> float:
        self.attempt += 1
        if retry_after is not None:
            return min(retry_after, self.cap)
        ceiling = min(self.cap, self.base * 2 ** min(self.attempt, 20))
        return random.uniform(0, ceiling)  # noqa: S311 - jitter, not a secret

    def reset(self) -> None:
        self.attempt = 0
