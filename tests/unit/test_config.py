"""Settings precedence: flags over HOURGLASS_* over hourglass.toml over defaults."""

from __future__ import annotations

from pathlib import Path

import pytest

from hourglass.config import SETTINGS_ENV, Settings, bucket_seconds, load_settings, settings_env
from hourglass.exceptions import ConfigError


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    for key in list(__import__("os").environ):
        if key.startswith("HOURGLASS"):
            monkeypatch.delenv(key)


def test_defaults() -> None:
    s = load_settings()
    assert (s.data_dir, s.port, s.bucket, s.bus) == ("hourglass-data", 8080, "1h", None)


def test_precedence(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / "hourglass.toml").write_text('port = 9000\nbucket = "5m"\ndata-dir = "from-toml"\n')
    monkeypatch.setenv("HOURGLASS_PORT", "9100")
    monkeypatch.setenv("HOURGLASS_DATA_DIR", "from-env")
    s = load_settings({"data_dir": "from-flag", "port": None})
    assert (s.port, s.bucket, s.data_dir) == (9100, "5m", "from-flag")


def test_config_flag_and_section(tmp_path: Path) -> None:
    path = tmp_path / "other.toml"
    path.write_text("[hourglass]\nmax_events_per_request = 7\n")
    assert load_settings(config=str(path)).max_events_per_request == 7


def test_bad_values_are_config_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOURGLASS_PORT", "eighty")
    with pytest.raises(ConfigError, match="port"):
        load_settings()


def test_unknown_toml_key_is_named(tmp_path: Path) -> None:
    (tmp_path / "hourglass.toml").write_text("prot = 1\n")
    with pytest.raises(ConfigError, match="prot"):
        load_settings()


def test_child_inherits_exact_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    parent = Settings(port=1234, bus="nats://x:1", stream_replicas=1)
    monkeypatch.setenv(SETTINGS_ENV, settings_env(parent)[SETTINGS_ENV])
    monkeypatch.setenv("HOURGLASS_PORT", "5")  # the parent's view wins over the environment
    assert load_settings() == parent


@pytest.mark.parametrize(
    ("text", "seconds"), [("1h", 3600), ("1m", 60), ("15m", 900), ("60m", 3600)]
)
def test_bucket_widths(text: str, seconds: int) -> None:
    assert bucket_seconds(text) == seconds


@pytest.mark.parametrize("text", ["7m", "2h", "30s", "0m", "h", "1d"])
def test_bucket_widths_refused(text: str) -> None:
    with pytest.raises(ConfigError, match="bucket"):
        bucket_seconds(text)
