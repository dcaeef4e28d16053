"""The gateway's OpenAPI 3.1 document, derived from the schema registry.

``POST /v1/events`` is described with the three CloudEvents HTTP modes (batch,
structured, binary) and every answer the gateway gives; each event type's ``data``
is the JSON Schema of its Avro schema (``hourglass.schemas.jsonschema``).

The document is built once per process (it only depends on the registry) and is
plain JSON-able data: ``msgspec.json.encode(openapi_document(registry))``.
"""

from __future__ import annotations

from typing import Any

from hourglass import __version__
from hourglass.protocol import BATCH, JSON, STRUCTURED
from hourglass.schemas import CompiledSchema, SchemaRegistry
from hourglass.schemas.jsonschema import JsonSchema, data_schema

__all__ = [
    "BATCH",
    "BINARY_HEADERS",
    "JSON",
    "STRUCTURED",
    "event_schema",
    "openapi_document",
]

OPENAPI_VERSION = "3.1.0"

# The attributes of a CloudEvent the gateway reads (hourglass.events.ENVELOPE_FIELDS).
_NON_EMPTY = {"type": "string", "minLength": 1}
_ATTRIBUTES: dict[str, JsonSchema] = {
    "specversion": {"type": "string", "enum": ["1.0"], "description": "CloudEvents version"},
    "id": {**_NON_EMPTY, "description": "with source, identifies the event (dedup key)"},
    "source": {**_NON_EMPTY, "description": "with id, identifies the event (dedup key)"},
    "time": {
        "type": ["string", "null"],
        "format": "date-time",
        "description": "when the event happened (client clock), RFC 3339 with an offset",
    },
    "subject": {"type": ["string", "null"]},
    "datacontenttype": {"type": ["string", "null"]},
    "dataschema": {"type": ["string", "null"]},
}

# Binary mode: the attributes travel as ce-* headers (percent-encoded), the body is data.
BINARY_HEADERS: dict[str, JsonSchema] = {
    "ce-specversion": {"type": "string", "enum": ["1.0"]},
    "ce-id": _NON_EMPTY,
    "ce-source": _NON_EMPTY,
    "ce-type": {"type": "string"},
    "ce-time": {"type": "string", "format": "date-time"},
    "ce-subject": {"type": "string"},
    "ce-dataschema": {"type": "string"},
}


def event_schema(schema: CompiledSchema) -> JsonSchema:
    """One CloudEvent of ``schema``'s type, as the gateway accepts it (no ``$ref``).

    Extension attributes are accepted and not stored, so other members are allowed.
    Hourglass's own three (``hgproducer``, ``hgseq``, ``hgacked``: events.py) are
    checked but left out of the document: for its SDK and tailer, not for clients
    the document describes, and JSON Schema's "integer" takes ``5.0``, which the
    gateway refuses (an OpenAPI fuzz then mostly generates refusals).
    """
    return {
        "type": "object",
        "title": schema.type_name,
        "required": ["specversion", "id", "source", "type", "data"],
        "properties": {
            "specversion": _ATTRIBUTES["specversion"],
            "id": _ATTRIBUTES["id"],
            "source": _ATTRIBUTES["source"],
            "type": {"type": "string", "enum": [schema.type_name]},
            "time": _ATTRIBUTES["time"],
            "subject": _ATTRIBUTES["subject"],
            "datacontenttype": _ATTRIBUTES["datacontenttype"],
            "dataschema": _ATTRIBUTES["dataschema"],
            "data": data_schema(schema),
        },
    }


def _ref(name: str) -> JsonSchema:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: JsonSchema, description: str) -> JsonSchema:
    return {"description": description, "content": {JSON: {"schema": schema}}}


def _with_retry_after(response: JsonSchema) -> JsonSchema:
    return {**response, "headers": {"Retry-After": _ref_header("RetryAfter")}}


def _ref_header(name: str) -> JsonSchema:
    return {"$ref": f"#/components/headers/{name}"}


def _ref_response(name: str) -> JsonSchema:
    return {"$ref": f"#/components/responses/{name}"}


_ERROR = _ref("Error")

_RESPONSES: dict[str, JsonSchema] = {
    "Ingested": _json(
        _ref("IngestResponse"),
        "The request was processed: every accepted event is durable on its type's stream, "
        "every rejected one (named by index, id and reason) on the failed-events stream.",
    ),
    "Unparseable": _json(
        _ERROR,
        "The body is not JSON of the right shape (not JSON, invalid UTF-8, bad gzip/zstd, "
        "nested too deeply, not an array in batch mode) or an empty batch.",
    ),
    "Unauthenticated": _json(_ERROR, "API keys are configured and the key is missing or unknown."),
    "Forbidden": _json(_ERROR, "The key may not send one of the event types in the request."),
    "NotFound": _json(_ERROR, "No such endpoint."),
    "MethodNotAllowed": {
        **_json(_ERROR, "Wrong method for this endpoint."),
        "headers": {"Allow": {"schema": {"type": "string"}, "required": True}},
    },
    "TooLarge": _json(
        _ERROR,
        "The body (after decompression) is over max_body_bytes, an event over "
        "max_event_bytes or its type's higher override (its index is named), or "
        "there are more than max_events_per_request events. Nothing was stored.",
    ),
    "UnsupportedMediaType": _json(_ERROR, "Unsupported Content-Type or Content-Encoding."),
    "Overloaded": _with_retry_after(
        _json(_ERROR, "Too many events in flight in this gateway; nothing was acknowledged.")
    ),
    "Unavailable": _with_retry_after(
        _json(
            _ERROR,
            "The bus is unreachable, not ready, full, or did not acknowledge in time; "
            "nothing was acknowledged (resend the whole request).",
        )
    ),
}

_COMMON_SCHEMAS: dict[str, JsonSchema] = {
    "Error": {
        "type": "object",
        "required": ["error"],
        "properties": {"error": {"type": "string", "minLength": 1}},
        "additionalProperties": False,
    },
    "Rejection": {
        "type": "object",
        "required": ["index", "id", "reason"],
        "properties": {
            "index": {"type": "integer", "minimum": 0},
            "id": {"type": ["string", "null"]},
            "reason": {"type": "string", "minLength": 1},
        },
        "additionalProperties": False,
    },
    "IngestResponse": {
        "type": "object",
        "required": ["accepted", "rejected"],
        "properties": {
            "accepted": {"type": "integer", "minimum": 0},
            "rejected": {"type": "array", "items": _ref("Rejection")},
        },
        "additionalProperties": False,
    },
    "Status": {
        "type": "object",
        "required": ["status"],
        "properties": {"status": {"type": "string", "minLength": 1}},
        "additionalProperties": False,
    },
}


def _event_union(names: list[str]) -> JsonSchema:
    if not names:
        return {"not": {}}
    return {
        "oneOf": [_ref(n) for n in names],
        "discriminator": {
            "propertyName": "type",
            "mapping": {n: f"#/components/schemas/{n}" for n in names},
        },
    }


_INGEST_DESCRIPTION = """\
CloudEvents 1.0 over HTTP. Three modes, told apart by Content-Type:

* `application/cloudevents-batch+json`: a JSON array of events (batch);
* `application/cloudevents+json`: one event (structured);
* binary: any JSON Content-Type with a `ce-specversion` header; the attributes are
  `ce-*` headers (percent-encoded) and the body is the event's `data`.

`application/json` is batch when the body starts with `[`, else structured (binary
when `ce-specversion` is present). `Content-Encoding: gzip` or `zstd` is accepted;
the decompressed size is capped by max_body_bytes.

Each event's `data` must match the Avro schema of its `type` (unknown fields are
rejected). An invalid event does not fail the request: it is named in `rejected`
with a reason and kept in the failed-events stream, and its valid neighbours are
accepted.
"""


def _ingest_operation(names: list[str]) -> JsonSchema:
    event = _ref("Event")
    batch: JsonSchema = {"type": "array", "minItems": 1, "items": event}
    data_of_any_type: JsonSchema = {
        "description": "binary mode (with ce-* headers): the data of the event",
        "anyOf": [_ref(f"{n}.data") for n in names] or [{"not": {}}],
    }
    parameters = [
        {
            "name": name,
            "in": "header",
            "required": False,
            "description": f"binary mode: the CloudEvents attribute {name[3:]!r} (percent-encoded)",
            "schema": schema,
        }
        for name, schema in {**BINARY_HEADERS, "ce-type": {"type": "string", "enum": names}}.items()
    ]
    responses = {
        "200": _ref_response("Ingested"),
        "400": _ref_response("Unparseable"),
        "401": _ref_response("Unauthenticated"),
        "403": _ref_response("Forbidden"),
        "404": _ref_response("NotFound"),
        "405": _ref_response("MethodNotAllowed"),
        "413": _ref_response("TooLarge"),
        "415": _ref_response("UnsupportedMediaType"),
        "429": _ref_response("Overloaded"),
        "503": _ref_response("Unavailable"),
    }
    return {
        "operationId": "ingestEvents",
        "summary": "Send CloudEvents",
        "description": _INGEST_DESCRIPTION,
        "parameters": parameters,
        "security": [{}, {"bearer": []}, {"apiKey": []}],
        "requestBody": {
            "required": True,
            "content": {
                BATCH: {"schema": batch},
                STRUCTURED: {"schema": event},
                JSON: {"schema": {"anyOf": [batch, event, data_of_any_type]}},
            },
        },
        "responses": responses,
    }


def _get(operation_id: str, summary: str, responses: JsonSchema) -> JsonSchema:
    return {"get": {"operationId": operation_id, "summary": summary, "responses": responses}}


def _status(description: str) -> JsonSchema:
    return _json(_ref("Status"), description)


def openapi_document(registry: SchemaRegistry) -> dict[str, Any]:
    """The OpenAPI 3.1 document of a gateway serving ``registry``'s event types."""
    names = registry.type_names
    schemas: dict[str, JsonSchema] = dict(_COMMON_SCHEMAS)
    for name in names:
        schemas[name] = event_schema(registry[name])
        schemas[f"{name}.data"] = schemas[name]["properties"]["data"]
    schemas["Event"] = _event_union(names)
    method_not_allowed = {"405": _ref_response("MethodNotAllowed")}
    paths: dict[str, JsonSchema] = {
        "/v1/events": {"post": _ingest_operation(names)},
        "/healthz": _get(
            "health",
            "The process is alive",
            {"200": _status('alive: {"status": "ok"}'), **method_not_allowed},
        ),
        "/readyz": _get(
            "ready",
            "The bus is connected and every stream exists",
            {
                "200": _status("ready to accept events"),
                "503": _status("the bus is not ready"),
                **method_not_allowed,
            },
        ),
        "/metrics": _get(
            "metrics",
            "Prometheus metrics of this process",
            {
                "200": {
                    "description": "Prometheus text exposition format 0.0.4",
                    "content": {"text/plain": {"schema": {"type": "string"}}},
                },
                **method_not_allowed,
            },
        ),
        "/openapi.json": _get(
            "openapi",
            "This document",
            {
                "200": {
                    "description": "the OpenAPI document",
                    "content": {JSON: {"schema": {"type": "object"}}},
                },
                **method_not_allowed,
            },
        ),
    }
    return {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": "Hourglass gateway",
            "version": __version__,
            "description": "Reliable event delivery: CloudEvents in, an hourly Parquet lake out.",
        },
        "paths": paths,
        "components": {
            "schemas": schemas,
            "responses": _RESPONSES,
            "headers": {
                "RetryAfter": {
                    "description": "seconds to wait before resending",
                    "required": True,
                    "schema": {"type": "integer", "minimum": 1},
                }
            },
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "apiKey": {"type": "apiKey", "in": "header", "name": "X-Api-Key"},
            },
        },
    }
