"""Event schemas: Avro ``.avsc`` files compiled into msgspec types, and their evolution.

``avro`` turns each schema into Struct types once, so validating an event's ``data``
is a single ``msgspec.json.decode`` in C; ``compat`` says whether a new version of a
schema can still read events written with the old one.
"""

from hourglass.schemas.avro import (
    DEMO_SCHEMAS_DIR,
    CompiledSchema,
    SchemaRegistry,
    compile_schema,
    load_registry,
)
from hourglass.schemas.compat import check_compatibility

__all__ = [
    "DEMO_SCHEMAS_DIR",
    "CompiledSchema",
    "SchemaRegistry",
    "check_compatibility",
    "compile_schema",
    "load_registry",
]
