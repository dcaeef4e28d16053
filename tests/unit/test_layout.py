"""The map of docs/architecture.md, checked: imports go one way, down the flow.

Parsed with ``ast`` (every ``import``, also inside functions), so a lazy import
counts as much as one at the top.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

import hourglass
import hourglass_tools
from hourglass import cli

PACKAGE = Path(hourglass.__file__).parent
TOOLS = Path(hourglass_tools.__file__).parent
# producer ──HTTP──▶ gateway ──▶ bus ◀── loader ──▶ lake: what each folder may import.
# schemas/ and the root modules are the floor every stage stands on.
ALLOWED = {
    "producer": set(),
    "gateway": {"bus", "schemas"},
    "bus": set(),
    "loader": {"bus", "lake", "schemas"},
    "lake": {"schemas"},
    "schemas": set(),
    # ``hourglass dashboard``: reads the bus, the lake and the loaders' checkpoints.
    "monitor": {"bus", "lake", "loader", "schemas"},
}
FLOW = ["producer", "gateway", "bus", "loader", "lake"]
# Root modules that start or inspect the stages: above every folder.
COMMANDS = {"cli", "up", "status", "audit", "query", "replay", "demo"}
MAX_LINES = 450


def _modules(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*.py") if "__pycache__" not in p.parts)


def _imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def _folder(module: str) -> str | None:
    """``hourglass.<folder>...`` -> folder; a root module -> None."""
    parts = module.split(".")
    return parts[1] if parts[0] == "hourglass" and len(parts) > 2 else None


def _stage(path: Path) -> str | None:
    if not path.is_relative_to(PACKAGE):
        return None
    rel = path.relative_to(PACKAGE).parts
    return rel[0] if len(rel) > 1 else None


def test_stages_import_only_downstream() -> None:
    wrong = []
    for path in _modules(PACKAGE):
        stage = _stage(path)
        if stage not in ALLOWED:
            continue
        for module in _imports(path):
            target = _folder(module)
            if target in ALLOWED and target != stage and target not in ALLOWED[stage]:
                wrong.append(f"{path.relative_to(PACKAGE)} imports {module}")
    assert not wrong, "imports against the flow:\n" + "\n".join(wrong)


def test_root_modules_below_the_stages_import_none_of_them() -> None:
    """Root modules other than the commands (config, durable, protocol, ...) sit
    below every stage; ``events.py`` builds its decoders from schemas/."""
    wrong = []
    for path in PACKAGE.glob("*.py"):
        if path.stem in COMMANDS:
            continue
        for module in _imports(path):
            if _folder(module) in FLOW:
                wrong.append(f"{path.name} imports {module}")
    assert not wrong, "\n".join(wrong)


def test_only_the_starters_import_the_gateway_and_nothing_imports_its_server() -> None:
    users = {
        path.relative_to(PACKAGE).as_posix()
        for path in _modules(PACKAGE)
        if _stage(path) != "gateway"
        and any(m.startswith("hourglass.gateway") for m in _imports(path))
    }
    assert users <= {"cli.py", "up.py"}, users


def test_the_sdk_needs_no_server_dependency() -> None:
    """``pip install hourglass`` (no extra) must be enough for producer/."""
    server = {"nats", "pyarrow", "numpy", "duckdb", "uvicorn", "prometheus_client"}
    wrong = []
    for path in (PACKAGE / "producer").rglob("*.py"):
        for module in _imports(path):
            top = module.split(".")[0]
            folder = _folder(module)
            if top in server or (
                top == "hourglass" and folder is not None and folder != "producer"
            ):
                wrong.append(f"{path.name} imports {module}")
    assert not wrong, "\n".join(wrong)


def test_nats_errors_are_caught_only_in_bus() -> None:
    catching = re.compile(r"except\s*\(?[^:\n]*\bnats\.")
    wrong = [
        path.name
        for path in [*_modules(PACKAGE), *_modules(TOOLS)]
        if _stage(path) != "bus" and catching.search(path.read_text())
    ]
    assert not wrong, f"map_nats_errors (bus/errors.py) instead, in {wrong}"


def test_hourglass_never_imports_its_tools() -> None:
    wrong = [
        path.name
        for path in _modules(PACKAGE)
        if any(m.split(".")[0] == "hourglass_tools" for m in _imports(path))
    ]
    assert not wrong, wrong


@pytest.mark.parametrize("root", [PACKAGE, TOOLS], ids=["hourglass", "hourglass_tools"])
def test_no_module_is_over_the_line_budget(root: Path) -> None:
    long = {
        path.relative_to(root).as_posix(): n
        for path in _modules(root)
        if (n := len(path.read_text().splitlines())) > MAX_LINES
    }
    assert not long, f"split along a seam (over {MAX_LINES} lines): {long}"


def test_a_server_tool_that_is_not_installed_says_where_it_is(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(cli, "entry_points", lambda group: [])
    assert cli.main(["bench", "--duration", "1s"]) == 2
    assert "pip install 'hourglass[server]'" in capsys.readouterr().err


def test_the_installed_tools_register_their_commands() -> None:
    names = {plugin.name for plugin in cli.entry_points(group=cli.PLUGINS)}
    assert names == set(cli.SERVER_TOOLS)
