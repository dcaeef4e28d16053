"""The CLI's offline commands, run in-process."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from hourglass.cli import main
from hourglass.schemas import DEMO_SCHEMAS_DIR

OLD: dict[str, Any] = {
    "type": "record",
    "name": "Skip",
    "namespace": "t",
    "fields": [{"name": "track", "type": "string"}],
}


def _write(tmp_path: Path, name: str, schema: dict[str, object]) -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(schema))
    return path


def test_schema_check_compatible(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    new = {**OLD, "fields": [*OLD["fields"], {"name": "n", "type": "int", "default": 0}]}
    code = main(
        [
            "schema",
            "check",
            str(_write(tmp_path, "a.avsc", OLD)),
            str(_write(tmp_path, "b.avsc", new)),
        ]
    )
    assert code == 0
    assert "is backward compatible" in capsys.readouterr().out


def test_schema_check_names_the_problem(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    new = {**OLD, "fields": [*OLD["fields"], {"name": "n", "type": "int"}]}
    code = main(
        [
            "schema",
            "check",
            str(_write(tmp_path, "a.avsc", OLD)),
            str(_write(tmp_path, "b.avsc", new)),
        ]
    )
    out = capsys.readouterr().out
    assert code == 1
    assert "NOT backward compatible" in out
    assert "'n'" in out and "default" in out


def test_schema_check_refuses_an_unsupported_new_schema(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    new = {**OLD, "fields": [{"name": "track", "type": ["string", "int"]}]}
    code = main(
        [
            "schema",
            "check",
            str(_write(tmp_path, "a.avsc", OLD)),
            str(_write(tmp_path, "b.avsc", new)),
        ]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert "b.avsc" in err and "track" in err


def test_schema_list(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["schema", "list", "--schemas", str(DEMO_SCHEMAS_DIR)]) == 0
    assert "music.SongSkipped" in capsys.readouterr().out
