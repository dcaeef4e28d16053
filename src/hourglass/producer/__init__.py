"""Producers: the Python SDK with a crash-safe spool, the file tailer, ``hourglass send``.

The SDK needs only the base install (msgspec, httpx, zstandard)::

    from hourglass.producer import Producer

    with Producer("http://127.0.0.1:8080", spool_dir="./spool") as producer:
        producer.emit("music.SongSkipped", {...})
"""

from hourglass.exceptions import SpoolFull
from hourglass.producer.client import AsyncProducer, Counters, Producer

__all__ = ["AsyncProducer", "Counters", "Producer", "SpoolFull"]
