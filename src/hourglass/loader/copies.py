"""Which rows of a batch are first copies: by producer sequence, or by key.

Rows of Hourglass's own producers carry ``hgproducer``/``hgseq``/``hgacked``
(``events.py``; ``SEQUENCE_COLUMNS`` of ``lake/arrow.py``) and are checked
against the producer table (``producers.py``): state per producer, nothing per
event.  Every other row is checked by ``(source, id)`` against the key window
(``dedup.py``).  A row is checked by exactly one of the two, so an event of our
SDK re-sent by hand without its attributes is not recognised as a duplicate of
its first copy (docs/lake.md, "Dedup").

Both answers are remembered at once, as pending: they commit with the rows of
the flush that follows (``stream.py``), and a crash loses them with the rows.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from hourglass.lake.arrow import SEQUENCE_COLUMNS
from hourglass.loader.dedup import Deduper
from hourglass.loader.keys import keys_of


@dataclass
class Sequenced:
    """The rows of a batch that carry a producer sequence."""

    rows: np.ndarray  # bool mask over the batch
    producers: pa.Array
    seqs: np.ndarray
    floors: np.ndarray


def sequenced(table: pa.Table) -> Sequenced | None:
    """None when no row carries a sequence (foreign clients: the common case, one
    null count).  The gateway checked the three travel together with
    ``hgacked < hgseq``; a row that breaks it anyway goes by key."""
    producer_column, seq_column, floor_column = SEQUENCE_COLUMNS
    if seq_column not in table.column_names:
        return None
    seqs = table.column(seq_column)
    if seqs.null_count == len(seqs):
        return None
    producers, floors = table.column(producer_column), table.column(floor_column)
    ok = pc.and_(pc.and_(pc.is_valid(producers), pc.is_valid(floors)), pc.less(floors, seqs))
    rows = pc.fill_null(ok, False).to_numpy(zero_copy_only=False)
    if not rows.any():
        return None
    at = pa.array(np.flatnonzero(rows))
    return Sequenced(
        rows=rows,
        producers=producers.take(at).combine_chunks(),
        seqs=seqs.take(at).to_numpy().astype(np.int64, copy=False),
        floors=floors.take(at).to_numpy().astype(np.int64, copy=False),
    )


def first_copies(
    deduper: Deduper, table: pa.Table, seq: Sequenced | None, now: float
) -> np.ndarray:
    """Mask of ``table``'s rows to keep; the kept ones remembered in ``deduper``."""
    keep = np.ones(table.num_rows, dtype=bool)
    source, ids = table.column("source"), table.column("id")
    key_rows = None
    if seq is not None:
        keep[seq.rows] = deduper.fresh_sequenced(seq.producers, seq.seqs, seq.floors, now)
        key_rows = np.flatnonzero(~seq.rows)
        if not len(key_rows):
            return keep
        source, ids = source.take(pa.array(key_rows)), ids.take(pa.array(key_rows))
    keys = keys_of(source, ids)
    hashes = deduper.hash(keys)
    first = deduper.fresh(keys, hashes)
    deduper.add(keys.filter(pa.array(first)), hashes[first], now)
    if key_rows is None:
        return first
    keep[key_rows] = first
    return keep
