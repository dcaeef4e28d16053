"""``hourglass replay-failed``: send rejected events of a type again, after a schema fix.

Reads the rejected events of ``--type`` from ``lake/_failed`` (verbatim, with
their original ``source`` and ``id``) and posts them to the gateway in batches.
Replaying twice is harmless: the loader keeps one copy per ``(source, id)``
within its dedup window.  The sequence attributes of Hourglass's own producers
(``hgproducer``/``hgseq``/``hgacked``) are taken off first: the producer counted
the rejected event as answered, so under its sequence the loader would take
the replay for a re-send and drop it; without them it goes by its key.
Events rejected again are reported with the new reason (and land in
``_failed`` once more).

Calls rejected from Segment's or Snowplow's endpoints are kept as their SDK sent
them, not as CloudEvents, and this command cannot send them again (their write
key is not stored): they are counted as ``not_cloudevents`` and left alone.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import msgspec
import pyarrow.compute as pc
import pyarrow.dataset as ds

from hourglass.events import SEQUENCE_FIELDS
from hourglass.exceptions import ConfigError
from hourglass.lake.failed import FAILED_DIR
from hourglass.protocol import BATCH


@dataclass
class ReplayResult:
    found: int = 0
    accepted: int = 0
    rejected: list[str] = field(default_factory=list)
    not_cloudevents: int = 0  # Segment calls or Snowplow events: not replayed


SEQUENCE_ATTRIBUTES = [f[0] for f in SEQUENCE_FIELDS]


def without_sequence(event: str) -> str:
    """``event`` (JSON text) without the producer sequence attributes."""
    if not any(name in event for name in SEQUENCE_ATTRIBUTES):
        return event
    try:
        decoded = msgspec.json.decode(event)
    except msgspec.DecodeError:
        return event  # not JSON: the gateway rejects it again, with the reason
    if not isinstance(decoded, dict):
        return event
    for name in SEQUENCE_ATTRIBUTES:
        decoded.pop(name, None)
    return msgspec.json.encode(decoded).decode()


def failed_events(lake: Path, type_name: str, since: dt.datetime | None = None) -> list[str]:
    """The JSON text of every rejected event of ``type_name``, oldest first, ready
    to send again (``without_sequence``)."""
    root = lake / FAILED_DIR
    if not root.exists():
        return []
    dataset = ds.dataset(root, format="parquet", partitioning="hive")
    condition = (pc.field("type") == type_name) & pc.field("event").is_valid()
    if since is not None:
        condition &= pc.field("received_at") >= since
    table = dataset.to_table(columns=["received_at", "event"], filter=condition)
    table = table.sort_by("received_at")
    return [without_sequence(str(e)) for e in table.column("event").to_pylist()]


def replay(
    lake: Path,
    type_name: str,
    base_url: str,
    *,
    since: dt.datetime | None = None,
    batch: int = 500,
) -> ReplayResult:
    found = failed_events(lake, type_name, since)
    events = [e for e in found if '"specversion"' in e]
    result = ReplayResult(found=len(found), not_cloudevents=len(found) - len(events))
    with httpx.Client(base_url=base_url, timeout=30) as client:
        for start in range(0, len(events), batch):
            chunk = events[start : start + batch]
            body = ("[" + ",".join(chunk) + "]").encode()
            response = client.post(
                "/v1/events",
                content=body,
                headers={"content-type": BATCH},
            )
            if response.status_code != 200:
                raise ConfigError(
                    f"gateway answered {response.status_code}: {response.text[:300]} "
                    f"(replayed {result.accepted} so far; run again to continue)"
                )
            answer = response.json()
            result.accepted += answer["accepted"]
            result.rejected += [f"{r['id']}: {r['reason']}" for r in answer["rejected"]]
    return result
