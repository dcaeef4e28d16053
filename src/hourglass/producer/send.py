"""``hourglass send``: one event from flags, or many from NDJSON (a file or stdin).

No spool: the command waits for the gateway's answer and reports it, so its exit
status says what happened — 0 all accepted, 1 some rejected (reasons printed
with their line numbers), 3 the gateway could not be reached or refused the
batch.  Each NDJSON line is a full CloudEvent, or with ``--type`` just its
``data``; missing ids are UUIDv7, a missing source is this installation's.
"""

from __future__ import annotations

import argparse
import datetime as dt
import socket
import sys
import time
from typing import Any, TextIO

import httpx
import msgspec

from hourglass.producer.http import Backoff, post_batch
from hourglass.producer.ids import uuid7

BATCH_EVENTS = 1000
ATTEMPTS = 6


def add_parser(sub: Any) -> None:
    send = sub.add_parser("send", help="send events: one from flags, or NDJSON from a file/stdin")
    send.add_argument("file", nargs="?", help="NDJSON file, - for stdin (omit with --data)")
    send.add_argument("--type", dest="event_type", help="event type (required with --data)")
    send.add_argument("--data", help="the event's data as JSON, for a single event")
    send.add_argument(
        "--source", help=f"CloudEvents source (default urn:hourglass:{socket.gethostname()})"
    )
    send.add_argument("--id", dest="event_id", help="event id for --data (default: a UUIDv7)")
    send.add_argument("--url", default="http://127.0.0.1:8080", help="gateway base URL")
    send.add_argument("--api-key", help="API key, if the gateway requires one")


def _events(args: argparse.Namespace, stream: TextIO) -> tuple[list[bytes], list[int], list[str]]:
    """Encoded events, their line numbers, and problems found before sending."""
    source = args.source or f"urn:hourglass:{socket.gethostname()}"
    now = dt.datetime.now(dt.UTC).isoformat().replace("+00:00", "Z")
    if args.data is not None:
        lines = [args.data]
    else:
        lines = stream.read().splitlines()
    events: list[bytes] = []
    numbers: list[int] = []
    problems: list[str] = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            value = msgspec.json.decode(line)
        except msgspec.DecodeError as exc:
            problems.append(f"line {number}: not JSON ({exc})")
            continue
        if not isinstance(value, dict):
            problems.append(f"line {number}: not a JSON object")
            continue
        if "specversion" not in value:
            if not args.event_type:
                problems.append(f"line {number}: no specversion, and no --type to wrap it in")
                continue
            value = {"specversion": "1.0", "type": args.event_type, "time": now, "data": value}
            if args.data is not None and args.event_id:
                value["id"] = args.event_id
        value.setdefault("id", str(uuid7()))
        value.setdefault("source", source)
        events.append(msgspec.json.encode(value))
        numbers.append(number)
    return events, numbers, problems


def cmd_send(args: argparse.Namespace) -> int:
    if args.data is None and args.file is None:
        print("hourglass send: give --type T --data JSON, a file, or - for stdin", file=sys.stderr)
        return 2
    if args.file in (None, "-"):
        events, numbers, problems = _events(args, sys.stdin)
    else:
        with open(args.file) as f:
            events, numbers, problems = _events(args, f)
    for problem in problems:
        print(f"not sent: {problem}", file=sys.stderr)
    headers = {"authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    accepted = rejected = 0
    with httpx.Client(base_url=args.url, timeout=30, headers=headers) as client:
        for start in range(0, len(events), BATCH_EVENTS):
            chunk = events[start : start + BATCH_EVENTS]
            backoff = Backoff(base=0.2, cap=5.0)
            for _ in range(ATTEMPTS):
                outcome = post_batch(client, chunk, encoding="identity")
                if outcome.kind != "retry":
                    break
                time.sleep(backoff.next_delay(outcome.retry_after))
            if outcome.kind != "done":
                print(
                    f"gateway {outcome.status or 'unreachable'}: {outcome.reason}", file=sys.stderr
                )
                print(f"accepted {accepted}, rejected {rejected}, not sent {len(events) - start}")
                return 3
            accepted += outcome.accepted
            rejected += len(outcome.rejected)
            for r in outcome.rejected:
                print(f"rejected: line {numbers[start + r.index]} (id {r.id}): {r.reason}")
    print(f"accepted {accepted}, rejected {rejected + len(problems)}")
    return 1 if rejected or problems else 0
