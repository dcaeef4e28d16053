"""Accepted events land in their type's stream, stamped, from any CloudEvents client."""

from __future__ import annotations

import gzip
import uuid

import httpx
import msgspec
import zstandard
from cloudevents.core.bindings.http import to_binary, to_structured
from cloudevents.core.formats.json import JSONFormat
from cloudevents.core.v1.event import CloudEvent

from tests.integration.support import (
    GatewayProcess,
    NatsServer,
    events_of,
    failed,
    post,
    skipped,
)


def _ce(event_id: str) -> CloudEvent:
    attributes = {
        "type": "music.SongSkipped",
        "source": "/sdk",
        "id": event_id,
        "specversion": "1.0",
    }
    return CloudEvent(attributes, _song_skipped_data())


def _song_skipped_data() -> dict[str, object]:
    return {
        "user_id": str(uuid.uuid4()),
        "track_id": "t-9",
        "skipped_at": "2026-11-26T12:00:00Z",
        "position_ms": 42,
    }


def test_cloudevents_sdk_batch_is_accepted(
    gateway: GatewayProcess, nats_server: NatsServer
) -> None:
    """A batch built by the cloudevents SDK (a client we did not write) goes through."""
    fmt = JSONFormat()  # the SDK's own encoder; a batch is a JSON array of its events
    body = b"[" + b",".join(fmt.write(_ce(f"sdk-{i}")) for i in range(5)) + b"]"
    response = post(gateway.base, body)
    assert response.status_code == 200, response.text
    assert response.json() == {"accepted": 5, "rejected": []}
    stored = events_of(nats_server.url, "music.SongSkipped")
    assert sorted(e["id"] for e in stored) == [f"sdk-{i}" for i in range(5)]
    for e in stored:
        assert e["source"] == "/sdk"
        assert e["received_at"].endswith("Z")
        assert e["data"]["position_ms"] == 42


def test_cloudevents_sdk_structured_and_binary(
    gateway: GatewayProcess, nats_server: NatsServer
) -> None:
    message = to_structured(_ce("s-1"), JSONFormat())
    r = httpx.post(gateway.base + "/v1/events", headers=message.headers, content=message.body)
    assert r.status_code == 200, r.text
    message = to_binary(_ce("b-1"), JSONFormat())
    r = httpx.post(gateway.base + "/v1/events", headers=message.headers, content=message.body)
    assert r.status_code == 200, r.text
    assert r.json()["accepted"] == 1
    ids = {e["id"] for e in events_of(nats_server.url, "music.SongSkipped")}
    assert ids == {"s-1", "b-1"}


def test_events_are_routed_by_type(gateway: GatewayProcess, nats_server: NatsServer) -> None:
    import random

    from hourglass.demo import demo_batch
    from hourglass.schemas import DEMO_SCHEMAS_DIR, SchemaRegistry

    registry = SchemaRegistry.load(DEMO_SCHEMAS_DIR)
    batch = demo_batch(registry, random.Random(7), 200, "/route")
    response = post(gateway.base, batch)
    assert response.json() == {"accepted": 200, "rejected": []}
    for schema in registry:
        want = {e["id"] for e in batch if e["type"] == schema.type_name}
        got = {e["id"] for e in events_of(nats_server.url, schema.type_name)}
        assert got == want, schema.type_name


def test_gzip_and_zstd_bodies(gateway: GatewayProcess, nats_server: NatsServer) -> None:
    a, b = skipped(), skipped()
    r1 = post(
        gateway.base, gzip.compress(msgspec.json.encode([a])), headers={"content-encoding": "gzip"}
    )
    r2 = post(
        gateway.base,
        zstandard.ZstdCompressor().compress(msgspec.json.encode([b])),
        headers={"content-encoding": "zstd"},
    )
    assert (r1.status_code, r2.status_code) == (200, 200), (r1.text, r2.text)
    ids = {e["id"] for e in events_of(nats_server.url, "music.SongSkipped")}
    assert ids == {a["id"], b["id"]}


def test_rejected_events_are_kept_with_reason(
    gateway: GatewayProcess, nats_server: NatsServer
) -> None:
    good, bad = skipped(), skipped()
    bad["data"]["position_ms"] = "soon"
    response = post(gateway.base, [good, bad])
    body = response.json()
    assert response.status_code == 200
    assert body["accepted"] == 1
    assert [(r["index"], r["id"]) for r in body["rejected"]] == [(1, bad["id"])]
    assert "position_ms" in body["rejected"][0]["reason"]
    records = failed(nats_server.url)
    assert len(records) == 1
    assert records[0]["id"] == bad["id"]
    assert records[0]["event"] == bad
    assert "position_ms" in records[0]["reason"]
    assert [e["id"] for e in events_of(nats_server.url, "music.SongSkipped")] == [good["id"]]


def test_group_commit_coalesces_concurrent_requests(
    gateway: GatewayProcess, nats_server: NatsServer
) -> None:
    """Many concurrent requests share bus messages: fewer messages than requests."""
    import asyncio

    import nats

    from hourglass.bus.jetstream import stream_name

    async def send_all() -> None:
        async with httpx.AsyncClient(base_url=gateway.base, timeout=30) as client:
            bodies = [msgspec.json.encode([skipped() for _ in range(10)]) for _ in range(200)]
            responses = await asyncio.gather(
                *(
                    client.post(
                        "/v1/events",
                        content=b,
                        headers={"content-type": "application/cloudevents-batch+json"},
                    )
                    for b in bodies
                )
            )
            assert all(r.status_code == 200 for r in responses)

    asyncio.run(send_all())

    async def count_messages() -> int:
        nc = await nats.connect(nats_server.url)
        info = await nc.jetstream().stream_info(stream_name("music.SongSkipped"))
        await nc.close()
        return int(info.state.messages)

    messages = asyncio.run(count_messages())
    assert len(events_of(nats_server.url, "music.SongSkipped")) == 2000
    assert messages < 200, f"{messages} bus messages for 200 requests: no group commit"
