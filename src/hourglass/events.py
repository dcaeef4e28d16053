"""Event shapes on the wire and on the bus.

A CloudEvent is decoded straight into a per-type ``msgspec.Struct`` (an
*envelope*) whose ``data`` field is the type's compiled Avro record, and whose
tag is the CloudEvents ``type`` attribute.  A whole batch is therefore one
``msgspec`` call against a tagged union of every known type: validation of
attributes and data runs in C.  Types with timestamps or dates have a second,
lenient envelope that also reads Avro's JSON encoding of them (epoch integers);
the gateway falls back to it when a batch fails the canonical one, then makes
the decoded data canonical (``schemas/avro.py``).

On the bus, a message is NDJSON: one envelope per line, ``received_at`` set,
``None`` attributes omitted.

Three extension attributes are Hourglass's own (``SEQUENCE_FIELDS``): the SDK
and the tailer stamp ``hgproducer``, ``hgseq`` and ``hgacked`` so the loader
deduplicates their events by sequence (``loader/producers.py``) rather than by
key.  Each is type- and range-checked here (what the OpenAPI document can say);
the loader uses them only when all three are present with ``hgacked < hgseq``,
and checks any other event by its key (``loader/copies.py``): a partial set
harms nothing, and costs no check per event here.  The loader reads that format; the failed-events
stream holds :class:`FailedEvent` records instead.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any, Literal

import msgspec

from hourglass.schemas import CompiledSchema, SchemaRegistry

NonEmpty = Annotated[str, msgspec.Meta(min_length=1)]
Timestamp = Annotated[dt.datetime, msgspec.Meta(tz=True)]

# CloudEvents 1.0 context attributes, in the order they are stored.  ``type`` is
# the union tag and is written first by msgspec.
ENVELOPE_FIELDS: list[tuple[str, Any] | tuple[str, Any, Any]] = [
    ("specversion", Literal["1.0"]),
    ("id", NonEmpty),
    ("source", NonEmpty),
    ("time", Timestamp | None, None),
    ("subject", str | None, None),
    ("datacontenttype", str | None, None),
    ("dataschema", str | None, None),
    # Any: a client-sent received_at is not validated, only overwritten.
    ("received_at", Any, None),
]
SEQUENCE_FIELDS: list[tuple[str, Any, Any]] = [
    ("hgproducer", Annotated[str, msgspec.Meta(min_length=1, max_length=256)] | None, None),
    ("hgseq", Annotated[int, msgspec.Meta(ge=1, le=(1 << 63) - 1)] | None, None),
    ("hgacked", Annotated[int, msgspec.Meta(ge=0, le=(1 << 63) - 1)] | None, None),
]


def envelope_type(
    schema: CompiledSchema, data_type: type[msgspec.Struct] | None = None
) -> type[msgspec.Struct]:
    """The Struct that validates one CloudEvent of ``schema``'s type."""
    fields = list(ENVELOPE_FIELDS) + list(SEQUENCE_FIELDS)
    fields.insert(3, ("data", data_type or schema.data_type))
    return msgspec.defstruct(
        "Event_" + schema.type_name.replace(".", "_"),
        fields,
        tag_field="type",
        tag=schema.type_name,
        kw_only=True,
        omit_defaults=True,
    )


class EventHead(msgspec.Struct):
    """Just enough of an event to report on it when it fails validation."""

    id: Any = None
    source: Any = None
    type: Any = None


class FailedEvent(msgspec.Struct, kw_only=True, omit_defaults=True):
    """One record of the failed-events stream: what was rejected, and why.

    ``event`` holds a rejected event verbatim when it is JSON text; ``body`` holds
    bytes that are not: a request body that could not be parsed at all (``index``
    is None), capped at ``failed_body_cap`` bytes (``body_truncated`` says so), or
    one event of a batch that is not UTF-8 (``index`` set).  msgspec writes
    ``body`` as base64, so a record is always valid JSON.
    """

    received_at: dt.datetime
    reason: str
    status: int
    gateway: str
    index: int | None = None
    id: str | None = None
    source: str | None = None
    type: str | None = None
    event: msgspec.Raw | None = None
    body: bytes | None = None
    body_truncated: bool = False
    content_type: str | None = None
    content_encoding: str | None = None


class EventTypes:
    """Envelope types for a registry, built once per process.

    ``batch_decoder``/``single_decoder`` read the canonical form of every type;
    ``avro_json_batch_decoder`` (None when no type has a timestamp or date) and the
    per-type ``decoders`` also read Avro JSON, and :meth:`canonical` must then be
    applied to what they return.
    """

    def __init__(self, registry: SchemaRegistry) -> None:
        self.registry = registry
        self.by_name: dict[str, type[msgspec.Struct]] = {
            s.type_name: envelope_type(s) for s in registry
        }
        lenient = {
            s.type_name: envelope_type(s, s.avro_json_type)
            for s in registry
            if s.to_canonical is not None
        }
        self._fixes = {lenient[s.type_name]: s.to_canonical for s in registry if s.to_canonical}
        self.name_of: dict[type[msgspec.Struct], str] = {
            cls: name for name, cls in [*self.by_name.items(), *lenient.items()]
        }
        union: Any = _union(tuple(self.by_name.values()))
        self.batch_decoder: msgspec.json.Decoder[Any] = msgspec.json.Decoder(list[union])
        self.single_decoder: msgspec.json.Decoder[Any] = msgspec.json.Decoder(union)
        either = {**self.by_name, **lenient}  # one class per tag: the lenient one if any
        either_union: Any = _union(tuple(either.values()))
        self.avro_json_batch_decoder: msgspec.json.Decoder[Any] | None = (
            msgspec.json.Decoder(list[either_union]) if lenient else None
        )
        self.decoders: dict[str, msgspec.json.Decoder[Any]] = {
            name: msgspec.json.Decoder(cls) for name, cls in either.items()
        }

    def canonical(self, envelopes: list[Any]) -> None:
        """Make the data of envelopes decoded as Avro JSON canonical, in place."""
        fixes = self._fixes
        for envelope in envelopes:
            fix = fixes.get(type(envelope))
            if fix is not None:
                fix(envelope.data)


def _union(classes: tuple[type[msgspec.Struct], ...]) -> Any:
    result: Any = classes[0]  # one class alone is its own "union"
    for cls in classes[1:]:
        result = result | cls
    return result


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)
