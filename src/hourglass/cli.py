"""The ``hourglass`` command line.

Every command takes the common flags (``--data-dir``, ``--schemas``, ``--port``,
``--bus``, ``--bucket``); settings not given as flags come from ``HOURGLASS_*``
environment variables, then ``hourglass.toml``.

Commands of other distributions register through the ``hourglass.commands``
entry points: a callable given the subparsers, which adds its parser with
``set_defaults(run=...)``.  The server tools (``hourglass bench``, ``hourglass
chaos``, in ``tools/``) come that way, with the ``server`` extra.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Callable, Coroutine
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from hourglass import log
from hourglass.config import Settings, load_settings
from hourglass.exceptions import ConfigError, HourglassError

COMMON = ("data_dir", "schemas", "port", "bus", "bucket", "log_level")
PLUGINS = "hourglass.commands"
# Named only to say where they come from when they are not installed.
SERVER_TOOLS = ("bench", "chaos")


def _common(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("common")
    g.add_argument("--data-dir", help="where the bus store and the lake live (./hourglass-data)")
    g.add_argument("--schemas", help="folder of Avro .avsc schemas (default: bundled demo)")
    g.add_argument("--port", type=int, help="gateway HTTP port (8080)")
    g.add_argument("--bus", help="external NATS, e.g. nats://a:4222,nats://b:4222")
    g.add_argument("--bucket", help="lake bucket width: 1h (default) or a divisor like 1m")
    g.add_argument("--lake", help="the lake: a folder (<data-dir>/lake) or s3://bucket/prefix")
    g.add_argument("--s3-endpoint", help="an S3-compatible store's URL, e.g. http://minio:9000")
    g.add_argument("--config", help="settings file (default ./hourglass.toml)")
    g.add_argument("--log-level", help="debug, info, warning (info)")
    g.add_argument(
        "--segment",
        action="store_true",
        default=None,
        help="accept Segment's HTTP API (/v1/batch...): Segment's and RudderStack's SDKs",
    )
    g.add_argument(
        "--snowplow",
        action="store_true",
        default=None,
        help="accept Snowplow's tracker protocol (/com.snowplowanalytics.snowplow/tp2, /i)",
    )


def _gateway_flags(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("gateway")
    g.add_argument("--host", help="address to listen on (127.0.0.1)")
    g.add_argument("--workers", type=int, help="gateway processes sharing the port (1)")
    g.add_argument("--api-keys", help="TOML file of API keys and the types each may send")
    g.add_argument(
        "--cors-origin",
        action="append",
        dest="cors_origins",
        help="a web page origin that may send, e.g. https://www.example.com (repeatable)",
    )
    g.add_argument("--tls-cert", help="PEM certificate: serve HTTPS")
    g.add_argument("--tls-key", help="PEM private key for --tls-cert")
    g.add_argument("--max-body-bytes", type=int, help="largest body after decompression")
    g.add_argument("--max-event-bytes", type=int, help="largest single event")
    g.add_argument("--max-events-per-request", type=int, help="most events in one request")
    g.add_argument("--stream-max-bytes", type=int, help="size limit of each stream")
    g.add_argument("--commit-max-wait-ms", type=float, help="longest group-commit wait")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hourglass",
        description="Reliable event delivery: CloudEvents in, an hourly Parquet lake out.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    up = sub.add_parser("up", help="run bus + gateway + loader in one command, locally")
    _common(up)
    _gateway_flags(up)
    up.add_argument("--dashboard-port", type=int, help="dashboard port (8090, else a free one)")
    up.add_argument("--demo", action="store_true", help="also run a demo producer")
    up.add_argument("--demo-rate", type=float, default=20.0, help="demo events per second")

    gateway = sub.add_parser("gateway", help="run the HTTP gateway against a running bus")
    _common(gateway)
    _gateway_flags(gateway)

    loader = sub.add_parser("loader", help="run the loader: bus → exactly-once Parquet lake")
    _common(loader)
    loader.add_argument("--flush-interval-s", type=float, help="how often rows are flushed (2)")
    loader.add_argument("--dedup-window-s", type=int, help="dedup window in seconds (86400)")
    loader.add_argument("--loader-metrics-port", type=int, help="serve /metrics here (off)")

    replay = sub.add_parser("replay-failed", help="re-send rejected events of a type")
    _common(replay)
    replay.add_argument("--type", required=True, dest="event_type", help="event type to replay")
    replay.add_argument("--since", help="only events rejected at or after (ISO 8601, UTC)")
    replay.add_argument("--url", help="gateway base URL (default http://127.0.0.1:<port>)")

    from hourglass.producer import send, tail

    send.add_parser(sub)
    tail.add_parser(sub)
    for plugin in entry_points(group=PLUGINS):
        plugin.load()(sub)

    status = sub.add_parser("status", help="streams, loader progress, open buckets, gateways")
    _common(status)
    status.add_argument(
        "--watch",
        nargs="?",
        const=5.0,
        type=float,
        metavar="SECONDS",
        help="refresh in place every SECONDS (5), with every type's recent buckets",
    )

    dashboard = sub.add_parser(
        "dashboard", help="serve the SLO metrics and the built-in dashboard page"
    )
    _common(dashboard)
    dashboard.add_argument("--dashboard-port", type=int, help="HTTP port (8090)")

    audit = sub.add_parser("audit", help="compare what gateways stored with the lake")
    _common(audit)
    audit.add_argument("--type", dest="event_type", help="only this event type")
    audit.add_argument("--since", help="only buckets starting at or after (ISO 8601, UTC)")

    query = sub.add_parser("query", help="SQL over the lake with DuckDB (a view per type)")
    _common(query)
    query.add_argument("sql", help='e.g. "select count(*) from "music.SongSkipped""')

    bus = sub.add_parser("bus", help="run only the embedded nats-server of --data-dir")
    _common(bus)

    schema = sub.add_parser("schema", help="schema tools")
    schema_sub = schema.add_subparsers(dest="schema_command", required=True, metavar="ACTION")
    check = schema_sub.add_parser("check", help="is NEW backward compatible with OLD?")
    check.add_argument("old", type=Path)
    check.add_argument("new", type=Path)
    lst = schema_sub.add_parser("list", help="compile every schema and list the types")
    _common(lst)
    return parser


def _settings(args: argparse.Namespace) -> Settings:
    names = set(Settings.__struct_fields__)
    flags = {k: v for k, v in vars(args).items() if k in names}
    return load_settings(flags, config=getattr(args, "config", None))


def _run(coro: Coroutine[Any, Any, None]) -> None:
    try:
        import uvloop

        uvloop.run(coro)
    except ImportError:
        asyncio.run(coro)


Service = Callable[[Settings], Coroutine[Any, Any, None]]


def _serve(args: argparse.Namespace, service: Service) -> int:
    """The body of every long-running command: settings, logging, then its loop."""
    settings = _settings(args)
    log.setup(settings.log_level)
    _run(service(settings))
    return 0


def cmd_up(args: argparse.Namespace) -> int:
    from hourglass.up import up

    return _serve(args, lambda s: up(s, demo=args.demo, demo_rate=args.demo_rate))


def cmd_gateway(args: argparse.Namespace) -> int:
    def gateways(settings: Settings) -> Coroutine[Any, Any, None]:
        if settings.workers > 1:
            from hourglass.up import run_gateways

            return run_gateways(settings)
        from hourglass.gateway.server import serve

        return serve(settings)

    return _serve(args, gateways)


def cmd_loader(args: argparse.Namespace) -> int:
    from hourglass.loader.service import run_loader

    return _serve(args, run_loader)


def cmd_replay(args: argparse.Namespace) -> int:
    import datetime as dt

    from hourglass.replay import replay

    settings = _settings(args)
    if settings.lake_remote:
        raise ConfigError("replay-failed reads a lake folder; on an S3 lake it is not built yet")
    since = dt.datetime.fromisoformat(args.since).replace(tzinfo=dt.UTC) if args.since else None
    url = args.url or f"http://127.0.0.1:{settings.port}"
    result = replay(settings.lake_path, args.event_type, url, since=since)
    print(
        f"{result.found} rejected {args.event_type} events found, {result.accepted} accepted "
        f"now, {len(result.rejected)} rejected again"
    )
    if result.not_cloudevents:
        print(
            f"{result.not_cloudevents} of them were rejected from the Segment or Snowplow "
            "endpoints and are not CloudEvents: not replayed (docs/analytics-sdks.md)"
        )
    for reason in result.rejected[:20]:
        print(f"  - {reason}")
    return 1 if result.rejected else 0


def cmd_send(args: argparse.Namespace) -> int:
    from hourglass.producer.send import cmd_send as run

    return run(args)


def cmd_tail(args: argparse.Namespace) -> int:
    from hourglass.producer.tail import cmd_tail as run

    return run(args)


def cmd_status(args: argparse.Namespace) -> int:
    from hourglass.status import gather_status

    settings = _settings(args)
    if args.watch is not None:
        from hourglass.monitor.terminal import watch

        _run(watch(settings, args.watch))
        return 0
    print(asyncio.run(gather_status(settings)))
    return 0


def cmd_dashboard(args: argparse.Namespace) -> int:
    from hourglass.monitor.server import run_dashboard

    return _serve(args, run_dashboard)


def cmd_audit(args: argparse.Namespace) -> int:
    import datetime as dt

    from hourglass.audit import render, run_audit

    settings = _settings(args)
    since = dt.datetime.fromisoformat(args.since).replace(tzinfo=dt.UTC) if args.since else None
    results = asyncio.run(run_audit(settings, type_name=args.event_type, since=since))
    print(render(results))
    return 0 if all(r.ok for r in results) else 1


def cmd_query(args: argparse.Namespace) -> int:
    from hourglass.query import run_query

    print(run_query(_settings(args), args.sql))
    return 0


def cmd_bus(args: argparse.Namespace) -> int:
    from hourglass.up import run_bus

    settings = _settings(args)
    log.setup(settings.log_level)
    _run(run_bus(settings))
    return 0


def cmd_schema(args: argparse.Namespace) -> int:
    from hourglass.schemas import check_compatibility, compile_schema

    if args.schema_command == "list":
        from hourglass.schemas import load_registry

        for schema in load_registry(_settings(args)):
            print(f"{schema.type_name}\t{schema.path}")
        return 0
    texts = []
    for path in (args.old, args.new):
        try:
            texts.append(json.loads(path.read_text()))
        except (OSError, ValueError) as exc:
            print(f"{path}: {exc}", file=sys.stderr)
            return 2
    compile_schema(texts[1], path=args.new)
    problems = check_compatibility(texts[0], texts[1])
    if not problems:
        print(f"{args.new} is backward compatible with {args.old}")
        return 0
    print(f"{args.new} is NOT backward compatible with {args.old}:")
    for problem in problems:
        print(f"  - {problem}")
    return 1


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "up": cmd_up,
    "gateway": cmd_gateway,
    "loader": cmd_loader,
    "replay-failed": cmd_replay,
    "query": cmd_query,
    "audit": cmd_audit,
    "status": cmd_status,
    "dashboard": cmd_dashboard,
    "send": cmd_send,
    "tail": cmd_tail,
    "bus": cmd_bus,
    "schema": cmd_schema,
}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    words = sys.argv[1:] if argv is None else argv
    installed = {plugin.name for plugin in entry_points(group=PLUGINS)}
    if words and words[0] in SERVER_TOOLS and words[0] not in installed:
        print(
            f"hourglass: `hourglass {words[0]}` is one of the server tools: "
            "pip install 'hourglass[server]'",
            file=sys.stderr,
        )
        return 2
    args = parser.parse_args(argv)
    run: Callable[[argparse.Namespace], int] = COMMANDS.get(args.command) or args.run
    try:
        return run(args)
    except HourglassError as exc:
        print(f"hourglass: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
