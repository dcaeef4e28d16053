"""UUIDv7 (RFC 9562): time-ordered ids, so ids sort roughly by emit time; and the
producer sequence attributes the SDK and the tailer stamp on events whose ids
they make (``hourglass.events.SEQUENCE_FIELDS``, ``loader/producers.py``)."""

from __future__ import annotations

import os
import threading
import time
import uuid

_lock = threading.Lock()
_last_ms = 0
_counter = 0


def uuid7() -> uuid.UUID:
    """48-bit Unix milliseconds, version 7, 12-bit counter (monotonic within a ms), random."""
    global _last_ms, _counter
    with _lock:
        ms = time.time_ns() // 1_000_000
        if ms <= _last_ms:
            ms = _last_ms
            _counter = (_counter + 1) & 0xFFF
            if _counter == 0:
                ms += 1  # 4096 ids in one ms: borrow the next ms, stay ordered
        else:
            _counter = int.from_bytes(os.urandom(2), "big") & 0x3FF
        _last_ms = ms
        counter = _counter
    rand = int.from_bytes(os.urandom(8), "big") & 0x3FFFFFFFFFFFFFFF
    value = (ms & 0xFFFFFFFFFFFF) << 80 | 0x7 << 76 | counter << 64 | 0b10 << 62 | rand
    return uuid.UUID(int=value)


def sequence_stamp(producer: str, seq: int, acked: int) -> bytes:
    """``hgproducer``/``hgseq``/``hgacked`` as JSON members, with the closing brace:
    spliced in place of an encoded event's own."""
    return b',"hgproducer":"%s","hgseq":%d,"hgacked":%d}' % (producer.encode(), seq, acked)
