"""Per-type limits at a real gateway and nats-server: an event over its type's own
size limit refused alone and kept, one over the global limit accepted for a type
whose own is higher, and each type's streams created with its own budget (and
partitions), and brought to a new one at the next start."""

from __future__ import annotations

import asyncio

import nats

from hourglass.bus.jetstream import FAILED_STREAM, stream_name
from hourglass.config import GiB, MiB, TypeSettings
from tests.integration.conftest import StartGateway
from tests.integration.support import NatsServer, events_of, failed, post, read_stream, skipped
from tests.integration.test_auth_tls import AD, SKIPPED, ad_impression


def _budgets(url: str, names: list[str]) -> dict[str, int]:
    async def run() -> dict[str, int]:
        nc = await nats.connect(url)
        try:
            js = nc.jetstream()
            return {name: (await js.stream_info(name)).config.max_bytes or 0 for name in names}
        finally:
            await nc.close()

    return asyncio.run(run())


def test_a_types_own_limits_at_a_real_gateway(
    start_gateway: StartGateway, nats_server: NatsServer
) -> None:
    gw = start_gateway(
        max_event_bytes=2048,
        types={
            SKIPPED: TypeSettings(max_event_bytes=600, stream_max_bytes=64 * MiB),
            AD: TypeSettings(max_event_bytes=8192, stream_max_bytes=128 * MiB, partitions=2),
        },
    )
    big = skipped(id="s-1")
    big["data"]["track_id"] = "t" * 800  # over its type's 600, under the global 2048
    large_ad = ad_impression(id="a-2")
    large_ad["data"]["ad_id"] = "a" * 4000  # over the global, under its type's 8192
    r = post(gw.base, [skipped(id="s-0"), big, large_ad, skipped(id="s-3")])
    assert r.status_code == 200, r.text
    answer = r.json()
    assert answer["accepted"] == 3
    ((rejected),) = answer["rejected"]
    assert (rejected["index"], rejected["id"]) == (1, "s-1")
    assert f"over types.{SKIPPED}.max_event_bytes (600)" in rejected["reason"]
    assert [e["id"] for e in events_of(nats_server.url, SKIPPED)] == ["s-0", "s-3"]
    ads = [e["id"] for p in (0, 1) for e in read_stream(nats_server.url, stream_name(AD, p))]
    assert ads == ["a-2"]
    (kept,) = failed(nats_server.url)
    assert (kept["index"], kept["type"], kept["event"]["id"]) == (1, SKIPPED, "s-1")
    assert kept["event"]["data"]["track_id"] == "t" * 800

    # an event over the global limit of a type without a higher one: 413, as before
    huge = skipped(id="s-4")
    huge["data"]["track_id"] = "t" * 3000
    r = post(gw.base, [skipped(id="s-5"), huge])
    assert r.status_code == 413, r.text
    assert "index 1" in r.json()["error"]

    assert _budgets(
        nats_server.url,
        [
            stream_name(SKIPPED),
            stream_name(AD, 0),
            stream_name(AD, 1),
            stream_name("music.SearchPerformed"),
            FAILED_STREAM,
        ],
    ) == {
        stream_name(SKIPPED): 64 * MiB,
        stream_name(AD, 0): 64 * MiB,  # the type's budget, shared by its partitions
        stream_name(AD, 1): 64 * MiB,
        stream_name("music.SearchPerformed"): GiB,  # the global stream_max_bytes
        FAILED_STREAM: GiB,
    }

    # a new budget for existing streams: brought to it at start, as the global one is
    gw.stop()
    start_gateway(
        types={
            SKIPPED: TypeSettings(stream_max_bytes=32 * MiB),
            AD: TypeSettings(partitions=2),  # its partitions cannot change
        }
    )
    assert _budgets(nats_server.url, [stream_name(SKIPPED), stream_name(AD, 0)]) == {
        stream_name(SKIPPED): 32 * MiB,
        stream_name(AD, 0): GiB // 2,  # back to the global budget
    }
