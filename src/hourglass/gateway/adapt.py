"""What the analytics protocols' adapters (``segment.py``, ``snowplow.py``) hand
the gateway: their requests' events as CloudEvents JSON for the validator, and
the items that could not become events.

An item of a request (a Segment call, a Snowplow event) may become more than one
event (a Segment track also lands in the type that claims its name), so every
rejection is reported, and kept, under the item's own index and text.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import msgspec

from hourglass.gateway.validate import Checked, Rejection
from hourglass.protocol import ErrorResponse, IngestResponse, Rejected


@dataclass
class Converted:
    events: bytes  # a JSON array of CloudEvents; b"" when there are none
    origin: list[int]  # the index of the item each event came from
    rejected: list[Rejection]  # items that did not become events, by their index
    raws: Callable[[], list[msgspec.Raw]]  # each item's text, for the failed stream
    items: int


def merge(converted: Converted, checked: Checked | None, data_name: str = "data") -> Checked:
    """The validator's result on the events (None: there were none), numbered by
    item, with the items rejected before it; ``data_name`` is what the protocol
    calls the part of an item that became an event's ``data``."""
    if checked is None:
        checked = Checked(count=0)
    rejected = list(converted.rejected)
    if checked.rejected:
        raws = converted.raws()
        for r in checked.rejected:
            index = converted.origin[r.index]
            reason = r.reason.replace("data", data_name, 1) if data_name != "data" else r.reason
            rejected.append(Rejection(index, r.id, r.source, r.type, reason, r.code, raws[index]))
        rejected.sort(key=lambda r: r.index)
    checked.rejected = rejected
    checked.count += len(converted.rejected)
    return checked


_CODES = {
    400: "invalid_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "too_large",
    415: "unsupported_media_type",
    429: "rate_limited",
    500: "internal",
    503: "unavailable",
}


@dataclass(frozen=True)
class Style:
    """How a protocol's clients read a refusal: its body, and the status they act
    on as intended (``client_status`` maps Hourglass's 4xx to it)."""

    name: str

    def body(self, encoder: msgspec.json.Encoder, status: int, message: str) -> bytes:
        if self.name == "segment":  # RudderStack's SDK needs both keys (see segment.py)
            code = _CODES.get(status, "error")
            return encoder.encode({"code": code, "message": message})
        return encoder.encode(ErrorResponse(message))

    def client_status(self, status: int) -> int:
        # Snowplow's trackers resend anything but 400/401/403/410/422 forever.
        if self.name == "snowplow" and 400 <= status < 500 and status != 429:
            return 400
        return status


CLOUDEVENTS = Style("cloudevents")
SEGMENT = Style("segment")
SNOWPLOW = Style("snowplow")


def answer(checked: Checked) -> IngestResponse:
    return IngestResponse(
        checked.count - len(checked.rejected),
        [Rejected(r.index, r.id, r.reason) for r in checked.rejected],
    )
