"""The bus layout as pure functions (``bus/jetstream.py``): names, partitions, refusals."""

from __future__ import annotations

import uuid
from collections import Counter

import pytest

from hourglass.bus.jetstream import (
    FAILED_STREAM,
    PARTITIONS_KEY,
    StreamLimits,
    check_layout,
    partition_counts,
    partition_of,
    stream_configs,
    stream_name,
    stream_of_subject,
    subject,
    subjects,
)
from hourglass.config import Settings
from hourglass.exceptions import ConfigError

LIMITS = StreamLimits(
    max_bytes=1 << 30, max_age_s=0, replicas=1, duplicate_window_s=120, max_msg_size=-1
)


def test_one_partition_keeps_the_names_of_every_earlier_version() -> None:
    assert stream_name("music.SongSkipped") == "HG_music_SongSkipped"
    assert subject("music.SongSkipped") == "hg.ev.music.SongSkipped"
    assert subjects("a.b", 1) == ["hg.ev.a.b"]
    assert stream_name("a.b", 3) == "HG_a_b-3" and subject("a.b", 3) == "hg.ev.a.b.3"
    assert subjects("a.b", 2) == ["hg.ev.a.b.0", "hg.ev.a.b.1"]


def test_every_subject_maps_back_to_its_stream() -> None:
    for name in ("a", "a.b", "music.SongSkipped", "x_1.y"):
        assert stream_of_subject(subject(name)) == stream_name(name)
        for p in (0, 7, 12):
            assert stream_of_subject(subject(name, p)) == stream_name(name, p)
    assert stream_of_subject("hg.failed.event") == FAILED_STREAM


def test_an_events_partition_is_fixed_by_its_source_and_id() -> None:
    """A contract between gateways of any version: these values must never change."""
    # CRC-32 of b"4:/web:1" and b"4:/app:e-42" (binascii), mod 16.
    pinned = {(s, i): partition_of(s, i, 16) for s, i in [("/web", "1"), ("/app", "e-42")]}
    assert pinned == {("/web", "1"): 2, ("/app", "e-42"): 12}
    assert partition_of("/wéb", "ü", 1 << 32) == 0xAF4E4000, "of the UTF-8 bytes"
    assert partition_of("ab", "c", 64) != partition_of("a", "bc", 64), "the length prefix"


def test_events_spread_evenly_over_partitions() -> None:
    counts = Counter(partition_of("/s", str(uuid.uuid4()), 4) for _ in range(40_000))
    assert set(counts) == {0, 1, 2, 3}
    assert max(counts.values()) < 1.05 * min(counts.values())


def test_a_partitioned_type_gets_a_stream_per_partition_sharing_its_budget() -> None:
    configs = {c.name: c for c in stream_configs({"a.b": 4, "c": 1}, LIMITS)}
    assert sorted(configs) == ["HG_FAILED", "HG_a_b-0", "HG_a_b-1", "HG_a_b-2", "HG_a_b-3", "HG_c"]
    assert configs["HG_a_b-2"].subjects == ["hg.ev.a.b.2"]
    assert configs["HG_a_b-2"].max_bytes == LIMITS.max_bytes // 4
    assert configs["HG_a_b-2"].metadata == {PARTITIONS_KEY: "4"}
    assert configs["HG_c"].max_bytes == LIMITS.max_bytes and configs["HG_c"].metadata is None


def test_partitions_that_differ_from_the_streams_there_are_refused() -> None:
    check_layout([], {"a.b": 4})  # nothing yet: any number
    check_layout(["HG_a_b-0", "HG_a_b-1", "HG_FAILED", "OTHER-1"], {"a.b": 2, "c": 3})
    check_layout(["HG_a_b"], {"a.b": 1})
    with pytest.raises(ConfigError, match="a.b has 1 partition.*the settings say 4"):
        check_layout(["HG_a_b"], {"a.b": 4})
    with pytest.raises(ConfigError, match="a.b has 4 partition.*the settings say 2"):
        check_layout([f"HG_a_b-{p}" for p in range(4)], {"a.b": 2})
    with pytest.raises(ConfigError, match="cannot change"):
        check_layout(["HG_a_b-0", "HG_a_b-1"], {"a.b": 1})


def test_partition_settings_are_checked() -> None:
    settings = Settings(partitions=2, type_partitions={"a": 8})
    assert partition_counts(settings, ["a", "b"]) == {"a": 8, "b": 2}
    with pytest.raises(ConfigError, match="unknown types"):
        partition_counts(settings, ["b"])
    for bad in ({"partitions": 0}, {"type_partitions": {"a": 257}}):
        with pytest.raises(ConfigError, match="must be 1..256"):
            Settings(**bad).validate()  # type: ignore[arg-type]
