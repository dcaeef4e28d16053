"""Dedup of Hourglass's own producers by sequence: state per producer, not per event.

The SDK and the tailer stamp each event, when it is spooled, with three
CloudEvents extension attributes: ``hgproducer`` (a session: a random id per
opening of a spool, so a cloned spool folder never shares one), ``hgseq`` (the
event's place in the session, rising by one) and ``hgacked`` (a floor: every
``hgseq`` at or below it had been answered by the gateway when this event was
spooled).  A re-send carries the same three values.

Why the floor is safe: an event the gateway answered was either accepted, and
so is on the bus before the event that carries the floor (the gateway answers
only once its events are durable), or rejected, and then the producer never
sends it again.  So an event of this stream whose ``hgseq`` is at or below a
floor *seen earlier in the stream* is a re-send of one already processed.  A
floor learnt in this very batch is applied only after it: the first copy of an
event may sit earlier in the same batch.

Per producer the table holds that floor and the exact set of sequences seen
above it, as ranges; a floor that rises prunes the ranges below it, so for the
SDK (one batch in flight) a producer costs a few dozen bytes whatever its rate.

Bounds: ``max_producers`` and ``max_ranges_total`` (a producer unseen for
``window_s`` leaves first, at a scan every ``AGE_SCAN_S``; over a bound, the
least recently seen leave at once) and ``max_ranges`` per producer (the lowest
ranges leave).  What leaves can only let a re-send through as a duplicate,
counted in ``evicted``; nothing is ever dropped that was not seen.  A range
costs ~70 B in memory (two ints in lists), so the defaults bound the table at
about 100 MB whatever the producers do; the SDK's producers hold one or two
ranges each, a tailer's up to a batch of lines.

Nothing here touches disk: the deduper (``dedup.py``) writes the table
(:meth:`ProducerTable.encode`) as a file its checkpoint names, at every flush
that changed it, so the file holds exactly the rows that flush commits; a crash
loses memory and rows together.
"""

from __future__ import annotations

import msgspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

MAX_PRODUCERS = 100_000
MAX_RANGES = 1024
MAX_RANGES_TOTAL = 1 << 20
AGE_SCAN_S = 10.0


class Session(msgspec.Struct, array_like=True):
    floor: int  # every seq <= floor was answered to the producer
    seen: float  # epoch s of its last event here
    lo: list[int] = []  # ranges [lo[i], hi[i]] of seqs seen above the floor, sorted
    hi: list[int] = []


class ProducerTable:
    def __init__(
        self,
        *,
        window_s: float,
        max_producers: int = MAX_PRODUCERS,
        max_ranges: int = MAX_RANGES,
        max_ranges_total: int = MAX_RANGES_TOTAL,
    ) -> None:
        self.window_s = window_s
        self.max_producers = max_producers
        self.max_ranges = max_ranges
        self.max_ranges_total = max_ranges_total
        self.producers: dict[str, Session] = {}
        self.ranges = 0  # over every producer
        self.evicted = 0  # producers or ranges forgotten for a bound, not for age
        self._scanned = float("-inf")

    def __len__(self) -> int:
        return len(self.producers)

    def fresh(
        self,
        producers: pa.Array | pa.ChunkedArray,
        seqs: np.ndarray,
        floors: np.ndarray,
        now: float,
    ) -> np.ndarray:
        """Mask of rows to keep (first copies), and remember them: the rows of
        ``producers``/``seqs``/``floors`` (aligned; ``producers`` has no nulls).

        One Python step per producer in the batch, numpy within it.
        """
        keep = np.ones(len(seqs), dtype=bool)
        if not len(seqs):
            return keep
        if isinstance(producers, pa.ChunkedArray):
            producers = producers.combine_chunks()
        encoded = pc.dictionary_encode(producers)
        codes = encoded.indices.to_numpy(zero_copy_only=False)
        names = encoded.dictionary.to_pylist()
        order = np.lexsort((seqs, codes))
        bounds = np.flatnonzero(np.diff(codes[order])) + 1
        for rows in np.split(order, bounds):
            name = names[int(codes[rows[0]])]
            keep[rows] = self._one(name, seqs[rows], floors[rows], now)
        self._fit(now)
        return keep

    def _one(self, name: str, seqs: np.ndarray, floors: np.ndarray, now: float) -> np.ndarray:
        """``seqs`` sorted: which are first copies; the producer's state updated."""
        state = self.producers.get(name)
        if state is None:
            state = self.producers[name] = Session(floor=-1, seen=now)
        keep = seqs > state.floor
        keep[1:] &= seqs[1:] != seqs[:-1]  # a copy later in the batch
        if state.lo:
            lo, hi = np.asarray(state.lo), np.asarray(state.hi)
            at = np.searchsorted(lo, seqs, side="right") - 1
            held = (at >= 0) & (seqs <= hi[np.maximum(at, 0)])
            keep &= ~held
        before = len(state.lo)
        new = seqs[keep]
        if len(new):
            self._insert(state, new)
        state.floor = max(state.floor, int(floors.max()))
        self._prune(state)
        state.seen = max(state.seen, now)
        self.ranges += len(state.lo) - before
        return keep

    def _insert(self, state: Session, new: np.ndarray) -> None:
        """Add sorted, unique ``new`` seqs (none held yet) to the ranges, merged."""
        cuts = np.flatnonzero(np.diff(new) != 1) + 1
        starts = np.concatenate(([new[0]], new[cuts])).astype(np.int64)
        ends = np.concatenate((new[cuts - 1], [new[-1]])).astype(np.int64)
        lo = np.concatenate((np.asarray(state.lo, dtype=np.int64), starts))
        hi = np.concatenate((np.asarray(state.hi, dtype=np.int64), ends))
        order = np.argsort(lo, kind="stable")
        lo, hi = lo[order], hi[order]
        # A range starts a new group unless it touches the reach of the ones before it.
        reach = np.maximum.accumulate(hi)
        head = np.ones(len(lo), dtype=bool)
        head[1:] = lo[1:] > reach[:-1] + 1
        groups = np.flatnonzero(head)
        state.lo = lo[groups].tolist()
        state.hi = np.maximum.reduceat(hi, groups).tolist()

    def _prune(self, state: Session) -> None:
        if state.lo and state.lo[0] <= state.floor:
            lo, hi = np.asarray(state.lo), np.asarray(state.hi)
            above = hi > state.floor
            lo, hi = np.maximum(lo[above], state.floor + 1), hi[above]
            state.lo, state.hi = lo.tolist(), hi.tolist()
        if len(state.lo) > self.max_ranges:
            cut = len(state.lo) - self.max_ranges
            del state.lo[:cut], state.hi[:cut]
            self.evicted += cut

    def _fit(self, now: float) -> None:
        """Age out producers unseen for the window (a scan every ``AGE_SCAN_S``,
        not every batch: the table may hold 100,000), then the least recently
        seen while a bound is passed."""
        if now - self._scanned >= AGE_SCAN_S:
            self._scanned = now
            horizon = now - self.window_s
            for name in [name for name, p in self.producers.items() if p.seen < horizon]:
                self._drop(name)
        if len(self.producers) <= self.max_producers and self.ranges <= self.max_ranges_total:
            return
        # Down to 90 % of the bounds, so the sort runs once per tenth of them, not
        # once per batch of a fleet larger than the table.
        producers, ranges = self.max_producers * 9 // 10, self.max_ranges_total * 9 // 10
        for name in sorted(self.producers, key=lambda n: self.producers[n].seen):
            if len(self.producers) <= producers and self.ranges <= ranges:
                break
            self._drop(name)
            self.evicted += 1

    def _drop(self, name: str) -> None:
        self.ranges -= len(self.producers.pop(name).lo)

    # ------------------------------------------------------------ persistence

    def encode(self) -> bytes:
        return msgspec.msgpack.encode(self.producers)

    def load(self, data: bytes) -> None:
        """Raises ``msgspec.DecodeError`` (a ``ValueError``) for bytes not of ``encode``."""
        self.producers = msgspec.msgpack.decode(data, type=dict[str, Session])
        self.ranges = sum(len(p.lo) for p in self.producers.values())
        self._scanned = float("-inf")
