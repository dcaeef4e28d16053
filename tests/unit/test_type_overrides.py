"""Per-type overrides of the global limits (``[types."<type>"]``: max_event_bytes,
stream_max_bytes, dedup_window_s, partitions): the accessors, the checks at
start, the gateway's size check (gateway/validate.py), the streams' budgets
(bus/jetstream.py) and the loader's dedup window (loader/streams.py)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import msgspec
import pytest
from prometheus_client import generate_latest

from hourglass.bus.embedded import MAX_PAYLOAD
from hourglass.bus.jetstream import (
    FAILED_STREAM,
    StreamLimits,
    partition_counts,
    stream_configs,
    stream_name,
)
from hourglass.config import GiB, KiB, MiB, Settings, TypeSettings, load_settings, settings_env
from hourglass.events import EventTypes
from hourglass.exceptions import BodyTooLarge, ConfigError
from hourglass.gateway.validate import DISABLED, INVALID_UTF8, TOO_LARGE, Limits, Validator
from hourglass.gateway.wire import Mode, Payload
from hourglass.loader.metrics import LoaderMetrics
from hourglass.loader.streams import build_streams
from hourglass.schemas import DEMO_SCHEMAS_DIR, SchemaRegistry

SKIPPED = "music.SongSkipped"  # a limit under the global one
AD = "music.AdImpression"  # a limit over it
SEARCH = "music.SearchPerformed"  # the global limit

# ---------------------------------------------------------------- settings


def test_overrides_in_hourglass_toml_and_the_accessors(tmp_path: Path) -> None:
    toml = tmp_path / "hourglass.toml"
    toml.write_text(
        f'[types."{AD}"]\nmax_event_bytes = 4096\nstream_max_bytes = 67108864\n'
        "dedup_window_s = 3600\npartitions = 2\n"
    )
    settings = load_settings(config=str(toml))
    assert (
        settings.max_event_bytes_of(AD),
        settings.stream_max_bytes_of(AD),
        settings.dedup_window_of(AD),
        settings.partitions_of(AD),
    ) == (4096, 64 * MiB, 3600, 2)
    # a type without them, and one with a table but no overrides: the globals
    settings = msgspec.structs.replace(
        settings, types={**settings.types, SKIPPED: TypeSettings(owner="x")}
    )
    for name in (SEARCH, SKIPPED):
        assert (
            settings.max_event_bytes_of(name),
            settings.stream_max_bytes_of(name),
            settings.dedup_window_of(name),
            settings.partitions_of(name),
        ) == (256 * KiB, GiB, 24 * 3600, 1)
    # a child process (``hourglass up``'s) sees the same
    again = msgspec.json.decode(settings_env(settings)["HOURGLASS__SETTINGS"], type=Settings)
    assert again.type_settings(AD) == settings.type_settings(AD)


def test_partitions_of_a_type_from_either_setting() -> None:
    settings = Settings(
        partitions=3, type_partitions={SEARCH: 4}, types={AD: TypeSettings(partitions=2)}
    ).validate()
    counts = partition_counts(settings, [AD, SEARCH, SKIPPED])
    assert counts == {AD: 2, SEARCH: 4, SKIPPED: 3}
    # both, and the same: fine
    Settings(type_partitions={AD: 2}, types={AD: TypeSettings(partitions=2)}).validate()


def _settings(**over: Any) -> Settings:
    types = over.pop("types", {})
    return msgspec.structs.replace(Settings(), types={AD: TypeSettings(**types)}, **over)


@pytest.mark.parametrize(
    ("over", "text"),
    [
        ({"types": {"max_event_bytes": 0}}, rf"types\.{AD}\.max_event_bytes is 0; it must be pos"),
        ({"types": {"stream_max_bytes": -1}}, "stream_max_bytes is -1; it must be positive"),
        ({"types": {"dedup_window_s": 0}}, "dedup_window_s is 0; it must be positive"),
        ({"types": {"partitions": 0}}, "partitions is 0; it must be positive"),
        ({"types": {"partitions": 257}}, r"partitions is 257, must be 1\.\.256"),
        (
            {"types": {"partitions": 2}, "type_partitions": {AD: 3}},
            f"type_partitions gives {AD} 3: set one of them",
        ),
        (
            {"types": {"max_event_bytes": 128 * KiB}, "max_body_bytes": 64 * KiB},
            r"must not exceed max_body_bytes \(65536\)",
        ),
        (
            {"types": {"max_event_bytes": 2 * MiB}},
            r"must not exceed commit_max_bytes \(1048576\)",
        ),
        (
            {
                "types": {"max_event_bytes": MAX_PAYLOAD},
                "max_body_bytes": 16 * MiB,
                "commit_max_bytes": 16 * MiB,
            },
            "must not exceed the bus's largest message",
        ),
        (
            {"types": {"stream_max_bytes": 512 * KiB}},
            "gives each of its 1 stream.s. 524288 bytes, under commit_max_bytes",
        ),
        (
            {"types": {"stream_max_bytes": 2 * MiB, "partitions": 4}},
            "gives each of its 4 stream.s. 524288 bytes",
        ),
        (
            {"types": {"dedup_window_s": 2 * 86400}, "lake_retention_days": 1},
            rf"must keep at least types\.{AD}\.dedup_window_s \(172800 s\)",
        ),
    ],
)
def test_bad_overrides_are_refused_at_start(over: dict[str, Any], text: str) -> None:
    with pytest.raises(ConfigError, match=text):
        _settings(**over).validate()


def test_an_override_over_the_global_limit_within_the_bounds_is_fine() -> None:
    _settings(types={"max_event_bytes": 1 * MiB}).validate()  # = commit_max_bytes


# ---------------------------------------------------------------- the gateway

TYPES = EventTypes(SchemaRegistry.load(DEMO_SCHEMAS_DIR))
TOP = 2000
LIMITS = Limits(TOP, 100, {SKIPPED: 600, AD: 4000, SEARCH: TOP})


def _event(type_name: str, i: int, size: int = 0, **data: Any) -> dict[str, Any]:
    """An event of ``type_name``, its id padded so that it is ``size`` bytes."""
    body: dict[str, Any] = {
        SKIPPED: {
            "user_id": "6f1c2a0e-6a3b-4f3e-9a51-2b0c1d7e8f90",
            "track_id": "t",
            "skipped_at": "2026-12-03T12:00:00Z",
            "position_ms": 1,
        },
        AD: {
            "user_id": "6f1c2a0e-6a3b-4f3e-9a51-2b0c1d7e8f90",
            "ad_id": "ad",
            "shown_at": "2026-12-03T12:00:00Z",
            "campaign_day": "2026-12-03",
            "duration_ms": 1,
            "price_micros": 1,
            "tracking_token": "AA==",
            "clicked": False,
        },
        SEARCH: {
            "user_id": "6f1c2a0e-6a3b-4f3e-9a51-2b0c1d7e8f90",
            "query": "q",
            "searched_at": "2026-12-03T12:00:00Z",
            "result_count": 1,
            "latency_ms": 1.0,
            "filters": {},
            "top_track_ids": [],
        },
    }[type_name]
    event = {
        "specversion": "1.0",
        "id": f"e-{i}",
        "source": "/t",
        "type": type_name,
        "data": {**body, **data},
    }
    pad = size - len(msgspec.json.encode(event))
    if pad > 0:
        event["id"] = f"e-{i}-" + "x" * (pad - 1)
    return event


def _check(events: list[Any], validator: Validator | None = None) -> Any:
    body = msgspec.json.encode(events)
    return (validator or Validator(TYPES, LIMITS)).check(Payload(Mode.BATCH, body))


def _ids(checked: Any) -> dict[str, list[str]]:
    return {t: [e.id[:4] for e in es] for t, es in checked.by_type.items()}


def test_an_event_over_its_types_own_limit_is_rejected_alone() -> None:
    events = [
        _event(SKIPPED, 0),
        _event(SKIPPED, 1, 1000),  # over its type's 600, under the global 2000
        _event(SEARCH, 2, 1000),
        _event(AD, 3, 3000),  # over the global, under its type's 4000
    ]
    unknown = {**_event(SEARCH, 4), "type": "no.Such"}
    for batch in (events, [*events, unknown]):  # the fast path, the per-event one
        checked = _check(batch)
        assert checked.count == len(batch)
        assert _ids(checked) == {SKIPPED: ["e-0"], SEARCH: ["e-2-"], AD: ["e-3-"]}
        (too_large, *others) = checked.rejected
        assert (too_large.index, too_large.type, too_large.code) == (1, SKIPPED, TOO_LARGE)
        assert too_large.id == events[1]["id"] and too_large.source == "/t"
        assert too_large.reason == (
            f"event is 1000 bytes, over types.{SKIPPED}.max_event_bytes (600); "
            "the event is kept in the failed stream"
        )
        assert json.loads(bytes(too_large.raw)) == events[1]  # kept as sent
        assert [r.index for r in others] == ([4] if len(batch) == 5 else [])


def test_the_avro_json_path_applies_the_types_limits_too() -> None:
    epoch = _event(SKIPPED, 0, skipped_at=1_764_763_200_000)  # Avro JSON's timestamp
    checked = _check([epoch, _event(SKIPPED, 1, 700), _event(AD, 2, 3000)])
    assert _ids(checked) == {SKIPPED: ["e-0"], AD: ["e-2-"]}
    assert [(r.index, r.code) for r in checked.rejected] == [(1, TOO_LARGE)]


def test_one_event_sent_alone() -> None:
    body = msgspec.json.encode(_event(SKIPPED, 0, 700))
    checked = Validator(TYPES, LIMITS).check(Payload(Mode.SINGLE, body))
    assert (checked.count, checked.by_type) == (1, {})
    assert [(r.index, r.code) for r in checked.rejected] == [(0, TOO_LARGE)]


@pytest.mark.parametrize(
    ("event", "text"),
    [
        (_event(SKIPPED, 1, 2500), r"index 1 is 2500 bytes, over max_event_bytes \(2000\)"),
        (_event(SEARCH, 1, 2500), r"index 1 is 2500 bytes, over max_event_bytes \(2000\)"),
        (
            _event(AD, 1, 4500),
            rf"index 1 is 4500 bytes, over types\.{AD}\.max_event_bytes \(4000\)",
        ),
        ({"type": SKIPPED, "pad": "x" * 2500}, r"index 1 is \d+ bytes, over max_event_bytes"),
        (["not", "an", "object", "x" * 2500], r"index 1 is \d+ bytes, over max_event_bytes"),
    ],
)
def test_an_event_over_the_global_limit_too_refuses_the_request(event: Any, text: str) -> None:
    """As without overrides (413): the failed stream keeps events up to the global
    limit, not beyond (an event over it might not fit in a bus message)."""
    for batch in ([_event(SKIPPED, 0, 700), event], [_event(SKIPPED, 0), event]):
        with pytest.raises(BodyTooLarge, match=text):
            _check(batch)


def test_disabled_and_too_large_events_keep_their_indexes() -> None:
    validator = Validator(TYPES, LIMITS, frozenset({AD}))
    events = [_event(AD, 0), _event(SKIPPED, 1, 900), _event(SKIPPED, 2), _event(AD, 3, 3000)]
    checked = _check(events, validator)
    assert _ids(checked) == {SKIPPED: ["e-2"]}
    assert [(r.index, r.code) for r in checked.rejected] == [
        (0, DISABLED),
        (1, TOO_LARGE),
        (3, DISABLED),
    ]


def test_an_oversized_event_with_bytes_that_are_not_utf8_is_kept_as_bytes() -> None:
    good = msgspec.json.encode(_event(SKIPPED, 0))
    bad = msgspec.json.encode(_event(SKIPPED, 1, 900)).replace(b'"t"', b'"t\xff"')
    checked = Validator(TYPES, LIMITS).check(Payload(Mode.BATCH, b"[" + good + b"," + bad + b"]"))
    assert _ids(checked) == {SKIPPED: ["e-0"]}
    ((r),) = checked.rejected
    assert (r.index, r.code, r.text) == (1, INVALID_UTF8, False)


def test_a_body_of_types_without_a_lower_limit_is_not_split(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The bound is the lowest limit of the types in the body: a type's low limit
    costs nothing to the bodies of the others."""
    validator = Validator(TYPES, LIMITS)
    splits: list[int] = []
    split = validator._split

    def counting(payload: Payload) -> Any:
        splits.append(len(payload.body))
        return split(payload)

    monkeypatch.setattr(validator, "_split", counting)
    _check([_event(SEARCH, i, 500) for i in range(3)], validator)  # 1.5 KB, under 2000
    assert splits == []
    _check([_event(SEARCH, i, 500) for i in range(3)] + [_event(SKIPPED, 3)], validator)
    assert len(splits) == 1


def test_overrides_equal_to_the_global_limit_change_nothing() -> None:
    validator = Validator(TYPES, Limits(TOP, 100, {SKIPPED: TOP}))
    with pytest.raises(BodyTooLarge, match="over max_event_bytes"):
        _check([_event(SKIPPED, 0, 2500)], validator)


# ---------------------------------------------------------------- streams


def test_a_types_budget_is_its_streams_shared_by_its_partitions() -> None:
    limits = StreamLimits(
        max_bytes=GiB,
        max_age_s=0,
        replicas=1,
        duplicate_window_s=120,
        max_msg_size=-1,
        type_max_bytes={AD: 64 * MiB, SKIPPED: GiB},
    )
    configs = {c.name: c.max_bytes for c in stream_configs({AD: 2, SKIPPED: 1, SEARCH: 4}, limits)}
    assert configs == {
        stream_name(AD, 0): 32 * MiB,
        stream_name(AD, 1): 32 * MiB,
        stream_name(SKIPPED): GiB,
        **{stream_name(SEARCH, p): GiB // 4 for p in range(4)},
        FAILED_STREAM: GiB,  # the global budget
    }


# ---------------------------------------------------------------- the loader


def test_a_types_dedup_window_reaches_its_index_and_the_metric(tmp_path: Path) -> None:
    settings = Settings(
        data_dir=str(tmp_path),
        dedup_disk_bytes=GiB,
        types={AD: TypeSettings(dedup_window_s=3600, partitions=2)},
    ).validate()
    metrics = LoaderMetrics()
    streams = build_streams(settings, metrics)
    windows = {s.label: s.loader.deduper.window_s for s in streams if s.loader.deduper}
    assert windows[f"{AD}/0"] == windows[f"{AD}/1"] == 3600
    assert windows[SKIPPED] == 24 * 3600
    for s in streams:
        if s.loader.deduper is not None and s.loader.observer is not None:
            s.loader.observer.on_index(s.loader.deduper.report(time.time()))
    text = generate_latest(metrics.registry).decode()
    name = "hourglass_loader_dedup_window_configured_seconds"
    assert f'{name}{{stream="{AD}/0"}} 3600.0' in text
    assert f'{name}{{stream="{SKIPPED}"}} 86400.0' in text
