"""The ingest protocol, as both ends speak it: content types and the answers.

The gateway writes these answers and every producer (the SDK, the tailer,
``hourglass send``) reads them, so they are defined once, here, with msgspec
only: the pip-installed SDK imports this module without the server's
dependencies.  The HTTP contract itself is in docs/gateway.md.
"""

from __future__ import annotations

import msgspec

__all__ = ["BATCH", "JSON", "STRUCTURED", "ErrorResponse", "IngestResponse", "Rejected"]

BATCH = "application/cloudevents-batch+json"
STRUCTURED = "application/cloudevents+json"
JSON = "application/json"


class Rejected(msgspec.Struct):
    """One event the gateway did not accept: where it was in the batch, and why."""

    index: int
    id: str | None
    reason: str


class IngestResponse(msgspec.Struct):
    """The 200 answer: every event is either accepted (durable) or rejected."""

    accepted: int
    rejected: list[Rejected]


class ErrorResponse(msgspec.Struct):
    """Every other answer: the request as a whole was not taken."""

    error: str
