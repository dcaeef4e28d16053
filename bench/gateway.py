"""Micro-benchmark: Validator.check + the NDJSON encode the gateway does per request.

One request = 1,000 music.SongSkipped events of ~160 bytes in batch mode; per
iteration: ``validator.check(payload)`` then ``encoder.encode_lines(envelopes)``
per type, exactly as ``Gateway._commit`` does.  Prints µs/event (median of
``--runs`` runs of ``--iters`` iterations each) and the p50/p99/max of single
iterations across all runs.

    python bench/gateway.py [--runs 7] [--iters 2000] [--events 1000] [--avro-json]

``--avro-json`` sends ``skipped_at`` as Avro JSON's epoch milliseconds, which
takes the fallback decode (canonical fails, the batch is read again with the
Avro-JSON types and made canonical).
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
import uuid

import msgspec

from hourglass.config import Settings
from hourglass.events import EventTypes
from hourglass.gateway.validate import Limits, Validator
from hourglass.gateway.wire import Mode, Payload
from hourglass.schemas import DEMO_SCHEMAS_DIR, SchemaRegistry


def body(n: int, avro_json: bool = False) -> bytes:
    events = [
        {
            "specversion": "1.0",
            "id": f"e-{i:06d}",
            "source": "/b",
            "type": "music.SongSkipped",
            "data": {
                "user_id": str(uuid.UUID(int=i)),
                "track_id": "t-1",
                "skipped_at": 1764158400123 if avro_json else "2026-11-26T12:00:00.123Z",
                "position_ms": 1500,
            },
        }
        for i in range(n)
    ]
    return msgspec.json.encode(events)


def main() -> None:  # noqa: C901 - a flat script
    p = argparse.ArgumentParser()
    p.add_argument("--runs", type=int, default=7)
    p.add_argument("--iters", type=int, default=2000)
    p.add_argument("--events", type=int, default=1000)
    p.add_argument("--bare", action="store_true", help="skip the gateway's imports")
    p.add_argument("--freeze", action="store_true", help="gc.freeze() before measuring")
    p.add_argument("--gen0", type=int, default=0, help="gc.set_threshold(gen0) if > 0")
    p.add_argument("--nogc", action="store_true", help="gc.disable()")
    p.add_argument("--keep", type=int, default=0, help="keep the last K requests alive (in flight)")
    p.add_argument("--avro-json", action="store_true", help="timestamps as epoch millis")
    args = p.parse_args()

    if not args.bare:
        # The gateway's heap: what a full collection has to walk.
        import uvicorn.protocols.http.httptools_impl  # noqa: F401
        import uvloop  # noqa: F401

        import hourglass.gateway.server  # noqa: F401
    s = Settings()
    types = EventTypes(SchemaRegistry.load(DEMO_SCHEMAS_DIR))
    validator = Validator(types, Limits(s.max_event_bytes, s.max_events_per_request))
    encoder = msgspec.json.Encoder()
    raw = body(args.events, args.avro_json)
    payload = Payload(Mode.BATCH, raw)
    if args.gen0:
        gc.set_threshold(args.gen0, *gc.get_threshold()[1:])
    gc_log: list[tuple[int, float]] = []
    gc_start = [0.0]

    def on_gc(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            gc_start[0] = time.perf_counter()
        else:
            gc_log.append((info["generation"], time.perf_counter() - gc_start[0]))

    gc.callbacks.append(on_gc)
    if args.nogc:
        gc.disable()
    if args.freeze:
        gc.collect()
        gc.freeze()

    inflight: list[object] = []

    def once() -> int:
        checked = validator.check(payload)
        if args.keep:
            inflight.append(checked)
            if len(inflight) > args.keep:
                del inflight[0]
        n = 0
        for envelopes in checked.by_type.values():
            n += len(encoder.encode_lines(envelopes))
        return n

    out_bytes = once()
    for _ in range(200):
        once()
    per_event: list[float] = []
    singles: list[float] = []
    clock = time.perf_counter
    for _ in range(args.runs):
        start = clock()
        for _ in range(args.iters):
            t0 = clock()
            once()
            singles.append(clock() - t0)
        per_event.append((clock() - start) / args.iters / args.events * 1e6)
    singles.sort()
    total = sum(singles)
    by_gen = {g: [d for gg, d in gc_log if gg == g] for g in (0, 1, 2)}
    gcs = "; ".join(f"gen{g} {len(d)}x max {max(d) * 1e3:.2f} ms" for g, d in by_gen.items() if d)
    gc_share = sum(d for _, d in gc_log) / total * 100

    def q(x: float) -> float:
        return singles[min(len(singles) - 1, int(x * len(singles)))] * 1e6

    print(
        f"body {len(raw)} B ({len(raw) / args.events:.0f} B/event), bus {out_bytes} B; "
        f"µs/event median {statistics.median(per_event):.3f} "
        f"(runs {' '.join(f'{x:.3f}' for x in per_event)}); "
        f"per request µs p50 {q(0.5):.0f} p99 {q(0.99):.0f} p99.9 {q(0.999):.0f} "
        f"max {singles[-1] * 1e6:.0f}; gc {gc_share:.1f}% of time ({gcs}); "
        f"gc objects {len(gc.get_objects())}; py {sys.version.split()[0]} "
        f"msgspec {msgspec.__version__}"
    )


if __name__ == "__main__":
    main()
