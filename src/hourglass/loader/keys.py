"""A batch's dedup keys and their 64-bit hashes, computed in C (Arrow, DuckDB).

A key is ``len(source):source:id``; its hash is DuckDB's vectorised ``hash()``
(~0.06 µs a key).  Runs keep hashes on disk (``runs.py``), so each records the
hash of :data:`PROBE_KEY` and a run written with another hash function (an
upgrade of DuckDB) is refused, never silently missed.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from hourglass.loader.hashindex import nonzero

PROBE_KEY = b"hourglass dedup probe"

HashFn = Callable[[pa.Array], np.ndarray]

_duck = threading.local()


def keys_of(source: pa.ChunkedArray | pa.Array, ids: pa.ChunkedArray | pa.Array) -> pa.Array:
    """The dedup key of each row: ``<bytes in source>:<source>:<id>``, as one binary array.

    The length prefix makes the key unambiguous whatever characters source and
    id contain (a plain separator could occur inside either).
    """
    length = pc.cast(pc.binary_length(source), pa.string())
    joined = pc.binary_join_element_wise(length, source, ids, ":")
    if isinstance(joined, pa.ChunkedArray):
        joined = joined.combine_chunks() if joined.num_chunks else pa.array([], pa.string())
    return joined.cast(pa.large_binary())


def hash64(keys: pa.Array) -> np.ndarray:
    """A 64-bit hash of each key's bytes (never 0), computed in C by DuckDB.

    One in-memory DuckDB per thread (a connection must not be shared between
    threads).  Runs keep these hashes on disk, so each records the hash of
    :data:`PROBE_KEY` and one written by another hash function is refused.
    """
    con: Any = getattr(_duck, "con", None)
    if con is None:
        con = _duck.con = duckdb.connect(config={"threads": 1})
    if not len(keys):
        return np.zeros(0, dtype=np.uint64)
    table = pa.table({"k": keys})
    hashes: np.ndarray = con.from_arrow(table).project("hash(k) AS h").fetchnumpy()["h"]
    return nonzero(np.asarray(hashes, dtype=np.uint64))


def probe_of(hash_fn: HashFn) -> int:
    return int(hash_fn(pa.array([PROBE_KEY], pa.large_binary()))[0])


def first_in_batch(keys: pa.Array, hashes: np.ndarray) -> np.ndarray:
    """True for the first row of each distinct key in the batch."""
    ordered = np.sort(hashes)  # the common case, no repeat, at a sort's cost (~2x cheaper)
    if not (ordered[1:] == ordered[:-1]).any():
        return np.ones(len(keys), dtype=bool)
    keep = np.zeros(len(keys), dtype=bool)
    _, first, group = np.unique(hashes, return_index=True, return_inverse=True)
    keep[first] = True
    repeats = np.flatnonzero(~keep)
    if not len(repeats):
        return keep
    earlier = first[group.reshape(-1)[repeats]]
    equal = pc.equal(keys.take(pa.array(repeats)), keys.take(pa.array(earlier)))
    if pc.all(equal).as_py():
        return keep
    # Two different keys share a hash: settle this batch exactly.
    keep[:] = False
    keep[
        pa.table({"k": keys, "i": pa.array(np.arange(len(keys)))})
        .group_by("k", use_threads=False)
        .aggregate([("i", "min")])
        .column("i_min")
        .to_numpy()
    ] = True
    return keep
