"""The loader's share of the machine: its CPU priority (:func:`yield_cpu`), how
``loader_memory_bytes`` is shared out, and the allocator setting that keeps the
process's RSS near what it allocates.

The shares, of ``loader_memory_bytes``, each split evenly by the event types:

* **dedup index**, half: filters and memtable (``dedup.py``), allocated up front,
  so this half is resident from the first minutes on;
* **unflushed rows**, an eighth: rows processed and not yet in a part file.  A
  stream flushes every ``flush_interval_s``, or at once when its rows pass its
  share (a loader catching up on a backlog processes faster than that);
* **the rest**, three eighths, is not counted but measured: the interpreter and
  its libraries (~140 MiB at start), Arrow's pool (Parquet writers, a flush's
  concatenated bucket, a compaction's merge), the fetched messages (at most
  ``bus/consumer.py`` ``GATHER_BYTES`` at a time) and the allocator's slack.
  ``hourglass bench --rate 150k`` with one type and the default 2 GiB: ~0.4 GiB
  of RSS beyond the index, at most ~0.6 GiB (``docs/performance.md``).

A budget much under 1 GiB cannot hold: the process alone is ~0.2 GiB.

glibc gives each thread that allocates its own arena (up to eight per core), and
gives an arena's free pages back to the kernel only from its top.  The loader
allocates in several threads (``asyncio.to_thread`` flushes, the compaction
thread, Arrow's pool), and numpy's and msgspec's short-lived buffers then leave
each arena fragmented: 300 MiB of median RSS at 150 k events/s, gone with two
arenas, at no measurable CPU cost (same bench, back to back).
"""

from __future__ import annotations

import contextlib
import ctypes
import os

_M_ARENA_MAX = -8  # glibc's mallopt parameter (malloc.h)
ARENAS = 2


def dedup_share(memory_bytes: int, types: int) -> int:
    """Each type's dedup index memory."""
    return memory_bytes // 2 // max(1, types)


def pending_share(memory_bytes: int, types: int) -> int:
    """Each type's bytes of unflushed rows, past which it flushes early."""
    return memory_bytes // 8 // max(1, types)


def limit_malloc_arenas(arenas: int = ARENAS) -> bool:
    """Cap glibc's malloc arenas (before the loader starts its threads); False
    where the C library is not glibc (the setting is then the allocator's own)."""
    with contextlib.suppress(OSError, AttributeError):  # no mallopt: not glibc
        return bool(ctypes.CDLL(None).mallopt(_M_ARENA_MAX, arenas))
    return False


def yield_cpu(nice: int) -> None:
    """Lower this process's CPU priority (see ``Settings.loader_nice``).

    Threads started later (Arrow's pool, ``asyncio.to_thread`` workers) inherit
    both: the nice value, and ``SCHED_BATCH``, which tells Linux the loader is a
    batch job whose wake-ups must not preempt a gateway mid-request.
    """
    os.nice(nice)
    if hasattr(os, "SCHED_BATCH"):
        with contextlib.suppress(OSError):
            os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))
