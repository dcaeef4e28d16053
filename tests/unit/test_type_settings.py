"""Per-type settings (``[types."<type>"]``): checked at start, and a disabled
type's events refused one by one (gateway/validate.py)."""

from __future__ import annotations

import json
from pathlib import Path

import msgspec
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from hourglass.config import Settings, TypeSettings, load_settings
from hourglass.events import EventTypes
from hourglass.exceptions import ConfigError
from hourglass.gateway.validate import DISABLED, Limits, Validator
from hourglass.gateway.wire import Mode, Payload
from hourglass.loader.slo import describe_types
from hourglass.schemas import DEMO_SCHEMAS_DIR, SchemaRegistry, load_registry

SKIPPED = "music.SongSkipped"
AD = "music.AdImpression"


def test_the_types_table_of_hourglass_toml(tmp_path: Path) -> None:
    toml = tmp_path / "hourglass.toml"
    toml.write_text(
        f'tier_targets_s = {{1 = 600, 2 = 3600}}\n[types."{AD}"]\nowner = "ads"\ntier = 1\n'
        f"enabled = false\n"
    )
    settings = load_settings(config=str(toml))
    assert settings.type_settings(AD) == TypeSettings(owner="ads", tier=1, enabled=False)
    assert settings.type_settings(SKIPPED) == TypeSettings()  # tier 2, enabled
    assert settings.tier_targets_s == {1: 600, 2: 3600}


@pytest.mark.parametrize(
    ("over", "text"),
    [
        ({"types": {AD: TypeSettings(tier=4)}}, "tiers are those of tier_targets_s"),
        ({"tier_targets_s": {1: 0}}, "positive"),
    ],
)
def test_bad_type_settings_are_refused(over: dict[str, object], text: str) -> None:
    with pytest.raises(ConfigError, match=text):
        msgspec.structs.replace(Settings(), **over).validate()


def test_settings_of_an_unknown_type_are_refused() -> None:
    settings = Settings(types={"music.SongSkiped": TypeSettings(owner="x")})
    with pytest.raises(ConfigError, match=r"types names unknown types \['music.SongSkiped'\]"):
        load_registry(settings)


TYPES = EventTypes(SchemaRegistry.load(DEMO_SCHEMAS_DIR))
VALIDATOR = Validator(TYPES, Limits(256 * 1024, 10_000), frozenset({AD}))


def _skipped(i: int) -> dict[str, object]:
    data = {
        "user_id": "6f1c2a0e-6a3b-4f3e-9a51-2b0c1d7e8f90",
        "track_id": "t",
        "skipped_at": "2026-12-03T12:00:00Z",
        "position_ms": 1,
    }
    return {"specversion": "1.0", "id": f"s-{i}", "source": "/t", "type": SKIPPED, "data": data}


def _ad(i: int, **data: object) -> dict[str, object]:
    return {"specversion": "1.0", "id": f"a-{i}", "source": "/t", "type": AD, "data": data}


def test_a_disabled_types_events_are_rejected_alone() -> None:
    # valid data or not: a disabled type is refused before its data is read
    events = [_skipped(0), _ad(1), _skipped(2), _ad(3, nonsense=True)]
    for body in (json.dumps(events[:3]), json.dumps(events)):  # the fast path, the slow one
        checked = VALIDATOR.check(Payload(Mode.BATCH, body.encode()))
        assert [e.id for e in checked.by_type[SKIPPED]] == ["s-0", "s-2"]
        assert AD not in checked.by_type
        assert {(r.index, r.type, r.code) for r in checked.rejected} >= {(1, AD, DISABLED)}
        assert all("is disabled" in r.reason for r in checked.rejected)
        assert msgspec.json.decode(bytes(checked.rejected[0].raw))["id"] == "a-1"


def test_the_loader_publishes_owner_tier_and_target() -> None:
    registry = CollectorRegistry()
    settings = Settings(types={AD: TypeSettings(owner="ads", tier=1, enabled=False)})
    describe_types(registry, settings, [AD, SKIPPED])
    text = generate_latest(registry).decode()
    assert f'hourglass_type_info{{owner="ads",tier="1",type="{AD}"}} 1.0' in text
    assert f'hourglass_type_info{{owner="",tier="2",type="{SKIPPED}"}} 1.0' in text
    assert f'hourglass_type_timeliness_target_seconds{{type="{AD}"}} 900.0' in text
    assert f'hourglass_type_enabled{{type="{AD}"}} 0.0' in text
    assert f'hourglass_type_enabled{{type="{SKIPPED}"}} 1.0' in text
