"""A demo producer for ``hourglass up --demo``: plausible events for any schema set.

``example(avsc)`` builds a valid ``data`` value straight from an Avro schema, so
the demo works with whatever ``--schemas`` folder is in use, not only the bundled
one.  The producer posts a CloudEvents batch every second and prints what the
gateway accepted.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import random
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import msgspec

from hourglass.config import Settings
from hourglass.protocol import BATCH
from hourglass.schemas import SchemaRegistry, load_registry

_WORDS = ["aurora", "bossa", "cumbia", "dub", "ember", "fado", "grime", "house", "indie", "jazz"]


def example(schema: Any, rng: random.Random, names: dict[str, Any] | None = None) -> Any:
    """A random value valid for the Avro ``schema`` (JSON-ready)."""
    names = {} if names is None else names
    if isinstance(schema, str):
        return (
            _primitive(schema, None, rng)
            if schema not in names
            else example(names[schema], rng, names)
        )
    if isinstance(schema, list):
        branches = [b for b in schema if b != "null"]
        return None if rng.random() < 0.2 or not branches else example(branches[0], rng, names)
    kind = schema["type"]
    if kind == "record":
        names[schema["name"]] = schema
        if "namespace" in schema:
            names[f"{schema['namespace']}.{schema['name']}"] = schema
        return {f["name"]: example(f["type"], rng, names) for f in schema["fields"]}
    if kind == "enum":
        names[schema["name"]] = schema
        return rng.choice(schema["symbols"])
    if kind == "array":
        return [example(schema["items"], rng, names) for _ in range(rng.randint(0, 3))]
    if kind == "map":
        return {rng.choice(_WORDS): example(schema["values"], rng, names) for _ in range(2)}
    if kind == "fixed":
        names[schema["name"]] = schema
        return base64.b64encode(rng.randbytes(schema["size"])).decode()
    return _primitive(kind, schema.get("logicalType"), rng)


def _primitive(kind: str, logical: str | None, rng: random.Random) -> Any:
    now = dt.datetime.now(dt.UTC)
    if logical in ("timestamp-millis", "timestamp-micros"):
        return now.isoformat().replace("+00:00", "Z")
    if logical == "uuid":
        return str(uuid.UUID(int=rng.getrandbits(128), version=4))
    if logical == "date":
        return now.date().isoformat()
    makers: dict[str, Callable[[], Any]] = {
        "null": lambda: None,
        "boolean": lambda: rng.random() < 0.5,
        "int": lambda: rng.randint(0, 600_000),
        "long": lambda: rng.randint(0, 10**12),
        "float": lambda: round(rng.uniform(0, 100), 2),
        "double": lambda: rng.uniform(0, 1),
        "string": lambda: rng.choice(_WORDS),
        "bytes": lambda: base64.b64encode(rng.randbytes(8)).decode(),
    }
    return makers[kind]()


def demo_batch(registry: SchemaRegistry, rng: random.Random, n: int, source: str) -> list[Any]:
    schemas = list(registry)
    events = []
    for _ in range(n):
        schema = rng.choice(schemas)
        events.append(
            {
                "specversion": "1.0",
                "id": str(uuid.uuid4()),
                "source": source,
                "type": schema.type_name,
                "time": dt.datetime.now(dt.UTC).isoformat().replace("+00:00", "Z"),
                "data": example(schema.avro, rng),
            }
        )
    return events


async def run_demo(base_url: str, settings: Settings, *, rate: float) -> None:
    registry = load_registry(settings)
    rng = random.Random()  # noqa: S311 - demo data, not secrets
    accepted = rejected = 0
    started = time.monotonic()
    async with httpx.AsyncClient(base_url=base_url, verify=False) as client:  # noqa: S501 - loopback demo
        while True:
            batch = demo_batch(registry, rng, max(1, int(rate)), "hourglass-demo")
            try:
                response = await client.post(
                    "/v1/events",
                    content=msgspec.json.encode(batch),
                    headers={"content-type": BATCH},
                )
                body = response.json()
                if response.status_code == 200:
                    accepted += body["accepted"]
                    rejected += len(body["rejected"])
                else:
                    print(f"demo: gateway answered {response.status_code}: {body}", flush=True)
            except httpx.HTTPError as exc:
                print(f"demo: gateway unreachable ({exc!r}), retrying", flush=True)
            elapsed = int(time.monotonic() - started)
            if elapsed % 5 == 0:
                closed, rows = lake_progress(settings.lake_path)
                print(
                    f"demo: {elapsed:>4}s  accepted {accepted:,} events "
                    f"({len(registry)} types), rejected {rejected:,}; "
                    f"lake: {closed} buckets closed holding {rows:,} events",
                    flush=True,
                )
            await asyncio.sleep(1.0)


def lake_progress(lake: Path) -> tuple[int, int]:
    """Closed buckets and the events in them, from their manifests."""
    closed = rows = 0
    for manifest in lake.glob("*/date=*/hour=*/**/_SUCCESS.json"):
        closed += 1
        rows += int(msgspec.json.decode(manifest.read_bytes()).get("count", 0))
    return closed, rows
