"""The example deployment files (deploy/) are ones a user can start from: the NATS
config is valid to nats-server itself, the settings load, every command line of
the systemd units and the compose file is one ``hourglass`` accepts, and the
load balancer points at the gateways the compose file starts."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from hourglass.bus.embedded import nats_server_binary
from hourglass.cli import build_parser
from hourglass.config import load_settings

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


@pytest.mark.parametrize("name", ["nats-1", "nats-2", "nats-3"])
def test_the_nats_config_is_valid_for_every_node(name: str, tmp_path: Path) -> None:
    env = {**os.environ, "NATS_NAME": name, "NATS_STORE": str(tmp_path)}
    done = subprocess.run(
        [str(nats_server_binary()), "-t", "-c", str(DEPLOY / "nats" / "nats.conf")],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    text = (DEPLOY / "nats" / "nats.conf").read_text()
    assert "sync_interval: always" in text  # the durability the gateway's 200 promises


def test_the_settings_load_and_describe_a_replicated_partitioned_deployment() -> None:
    settings = load_settings(config=str(DEPLOY / "hourglass.toml"))
    assert settings.stream_replicas == 3
    assert settings.partitions > 1
    assert settings.bus is not None
    nodes = re.findall(r"nats://([\w-]+):4222", settings.bus)
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    assert sorted(nodes) == sorted(s for s in compose["services"] if s.startswith("nats-"))


def _hourglass_commands() -> list[list[str]]:
    commands = []
    for unit in (DEPLOY / "systemd").glob("hourglass-*.service"):
        line = next(x for x in unit.read_text().splitlines() if x.startswith("ExecStart="))
        commands.append(shlex.split(line.removeprefix("ExecStart="))[1:])
    compose: dict[str, Any] = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    for service in compose["services"].values():
        command = service.get("command") or []
        if command[:1] == ["hourglass"]:
            commands.append(command[1:])
    return commands


def test_every_command_line_is_one_hourglass_accepts() -> None:
    commands = _hourglass_commands()
    assert {c[0] for c in commands} == {"gateway", "loader"}
    parser = build_parser()
    for command in commands:
        args = parser.parse_args(command)
        # The file each points at is the one the image installs.
        assert args.config == "/etc/hourglass/hourglass.toml", command
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    assert "deploy/hourglass.toml deploy/nats/nats.conf /etc/hourglass/" in dockerfile


def test_the_load_balancer_sends_to_every_gateway_of_the_compose_file() -> None:
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    gateways = {
        name for name, s in compose["services"].items() if "gateway" in s.get("command", [])
    }
    upstream = set(re.findall(r"server ([\w-]+):8080", (DEPLOY / "nginx.conf").read_text()))
    assert gateways and upstream == gateways
