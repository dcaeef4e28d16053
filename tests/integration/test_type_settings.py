"""A type switched off at a real gateway: its events refused one by one, kept in
the failed stream, their neighbours accepted."""

from __future__ import annotations

from hourglass.config import TypeSettings
from tests.integration.conftest import StartGateway
from tests.integration.support import NatsServer, events_of, failed, post, skipped
from tests.integration.test_auth_tls import AD, SKIPPED, ad_impression


def test_a_disabled_type_is_refused_and_kept(
    start_gateway: StartGateway, nats_server: NatsServer
) -> None:
    gw = start_gateway(types={AD: TypeSettings(owner="ads", enabled=False)})
    events = [skipped(id="s-0"), ad_impression(id="a-1"), skipped(id="s-2")]
    r = post(gw.base, events)
    assert r.status_code == 200, r.text
    answer = r.json()
    assert answer["accepted"] == 2
    assert [(x["index"], x["id"]) for x in answer["rejected"]] == [(1, "a-1")]
    assert "disabled" in answer["rejected"][0]["reason"]
    assert [e["id"] for e in events_of(nats_server.url, SKIPPED)] == ["s-0", "s-2"]
    assert events_of(nats_server.url, AD) == []
    (kept,) = failed(nats_server.url)
    assert (kept["index"], kept["type"], kept["event"]["id"]) == (1, AD, "a-1")
