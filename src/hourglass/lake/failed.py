"""Rows of ``lake/_failed``: every rejected event or unparseable body, with its reason.

Failed events are the exception, not the hot path, so rows are built from the
decoded records directly.  ``event`` holds the rejected event's JSON verbatim;
``body`` the raw bytes of what is not JSON text: a body that could not be parsed
(``index`` null), or one event of a batch that is not valid UTF-8 (``index`` set).
"""

from __future__ import annotations

import msgspec
import pyarrow as pa

from hourglass.events import FailedEvent
from hourglass.lake.arrow import TS_US

FAILED_DIR = "_failed"

SCHEMA = pa.schema(
    [
        pa.field("received_at", TS_US, nullable=False),
        pa.field("reason", pa.string(), nullable=False),
        pa.field("status", pa.int32()),
        pa.field("gateway", pa.string()),
        pa.field("index", pa.int32()),
        pa.field("id", pa.string()),
        pa.field("source", pa.string()),
        pa.field("type", pa.string()),
        pa.field("event", pa.string()),
        pa.field("body", pa.binary()),
        pa.field("body_truncated", pa.bool_()),
        pa.field("content_type", pa.string()),
        pa.field("content_encoding", pa.string()),
    ]
)


_NULL = msgspec.Raw(b"null")


class _FailedRow(FailedEvent, kw_only=True):
    # msgspec cannot decode ``Raw | None``; an absent event reads as JSON null.
    event: msgspec.Raw = _NULL


class FailedFormat:
    def __init__(self) -> None:
        self._decoder = msgspec.json.Decoder(_FailedRow)

    def to_table(self, ndjson: bytes) -> pa.Table:
        records = [self._decoder.decode(line) for line in ndjson.splitlines() if line]
        columns: dict[str, list[object]] = {name: [] for name in SCHEMA.names}
        for r in records:
            columns["received_at"].append(r.received_at)
            columns["reason"].append(r.reason)
            columns["status"].append(r.status)
            columns["gateway"].append(r.gateway)
            columns["index"].append(r.index)
            columns["id"].append(r.id)
            columns["source"].append(r.source)
            columns["type"].append(r.type)
            event = bytes(r.event)
            columns["event"].append(None if event in (b"", b"null") else event.decode())
            columns["body"].append(r.body)
            columns["body_truncated"].append(r.body_truncated)
            columns["content_type"].append(r.content_type)
            columns["content_encoding"].append(r.content_encoding)
        return pa.table(columns, schema=SCHEMA)
