"""From an HTTP request to JSON bytes of CloudEvents (the CloudEvents HTTP binding).

Three modes, told apart by ``Content-Type``:

* batch: ``application/cloudevents-batch+json`` (or ``application/json`` holding an
  array) — the body is a JSON array of events;
* structured: ``application/cloudevents+json`` (or ``application/json`` holding an
  object) — the body is one event;
* binary: any content type with a ``ce-specversion`` header — the attributes are
  ``ce-*`` headers and the body is ``data``.

``Content-Encoding: gzip`` and ``zstd`` are undone here with a hard cap on the
decompressed size, so a compression bomb costs at most ``max_body_bytes``.
"""

from __future__ import annotations

import enum
import zlib
from dataclasses import dataclass
from urllib.parse import unquote

import msgspec
import zstandard

from hourglass.exceptions import BodyTooLarge, Unparseable, UnsupportedMediaType
from hourglass.protocol import BATCH, JSON, STRUCTURED

__all__ = ["BATCH", "JSON", "STRUCTURED", "Mode", "Payload", "decompress", "to_payload"]

CE_ATTRIBUTES = ("id", "source", "type", "specversion", "time", "subject", "dataschema")


class Mode(enum.Enum):
    BATCH = "batch"
    SINGLE = "single"


@dataclass(frozen=True)
class Payload:
    mode: Mode
    body: bytes  # JSON: an array (BATCH) or one event object (SINGLE)


def decompress(body: bytes, encoding: str | None, limit: int) -> bytes:
    """Undo ``Content-Encoding``, refusing to produce more than ``limit`` bytes."""
    if not encoding or encoding == "identity":
        return body
    if encoding in ("gzip", "x-gzip"):
        return _gunzip(body, limit)
    if encoding == "zstd":
        try:
            # First pass bounded, so a bomb stops at limit + 1 bytes; the second
            # pass (known to be small) tells a complete frame from a truncated one.
            with zstandard.ZstdDecompressor().stream_reader(body, read_across_frames=True) as r:
                if len(r.read(limit + 1)) > limit:
                    raise BodyTooLarge(f"decompressed body exceeds max_body_bytes ({limit} bytes)")
            parts: list[bytes] = []
            rest = body
            while rest:
                frame = zstandard.ZstdDecompressor().decompressobj()
                parts.append(frame.decompress(rest))
                if not frame.eof:
                    raise Unparseable("body is not valid zstd: the frame is truncated")
                rest = frame.unused_data
        except zstandard.ZstdError as exc:
            raise Unparseable(f"body is not valid zstd: {exc}") from exc
        return b"".join(parts)
    raise UnsupportedMediaType(
        f"Content-Encoding {encoding!r} is not supported: use gzip, zstd or none"
    )


def _gunzip(body: bytes, limit: int) -> bytes:
    """Every gzip member in turn (RFC 1952 allows several), capped in total."""
    parts: list[bytes] = []
    size = 0
    rest = body
    while rest:
        member = zlib.decompressobj(wbits=31)
        try:
            out = member.decompress(rest, limit - size + 1)
        except zlib.error as exc:
            raise Unparseable(f"body is not valid gzip: {exc}") from exc
        size += len(out)
        if size > limit or member.unconsumed_tail:
            raise BodyTooLarge(f"decompressed body exceeds max_body_bytes ({limit} bytes)")
        if not member.eof:
            raise Unparseable("body is not valid gzip: the stream is truncated")
        parts.append(out)
        rest = member.unused_data
    return b"".join(parts)


def media_type(content_type: str | None) -> str:
    return (content_type or "").split(";", 1)[0].strip().lower()


def to_payload(body: bytes, content_type: str | None, headers: dict[str, str]) -> Payload:
    """Classify the request and produce the JSON to validate."""
    media = media_type(content_type)
    if media == BATCH:
        return Payload(Mode.BATCH, body)
    if media == STRUCTURED:
        return Payload(Mode.SINGLE, body)
    if "ce-specversion" in headers:
        return Payload(Mode.SINGLE, binary_to_structured(body, media, headers))
    if media == JSON:
        first = body.lstrip()[:1]
        return Payload(Mode.BATCH if first == b"[" else Mode.SINGLE, body)
    raise UnsupportedMediaType(
        f"Content-Type {content_type or '(none)'!r} is not supported: send "
        f"{BATCH} (a JSON array of events), {STRUCTURED} (one event), or binary mode "
        "with ce-* headers"
    )


def binary_to_structured(body: bytes, media: str, headers: dict[str, str]) -> bytes:
    """Binary mode: ``ce-*`` headers are attributes, the body is ``data`` (JSON)."""
    attributes: dict[str, object] = {}
    for name in CE_ATTRIBUTES:
        value = headers.get("ce-" + name)
        if value is not None:
            attributes[name] = unquote(value)
    if media:
        attributes["datacontenttype"] = media
    if media and not (media == JSON or media.endswith("+json")):
        raise UnsupportedMediaType(
            f"binary mode data must be JSON (Content-Type application/json), got {media!r}"
        )
    try:
        data = msgspec.json.decode(body, type=msgspec.Raw)
    except msgspec.DecodeError as exc:
        raise Unparseable(f"binary mode body (the event's data) is not valid JSON: {exc}") from exc
    attributes["data"] = data
    return msgspec.json.encode(attributes)
