"""The loader's checkpoint for one stream: ``<data-dir>/loader/<stream>.json``.

Invariants (the order of one flush is in ``stream.StreamLoader.flush``):

* ``committed_seq``: every event of stream messages ``<= committed_seq`` is in a
  renamed, fsynced Parquet file (or was dropped as a duplicate, or was a
  marker); files named with a range above it belong to a flush that did not
  commit and are deleted at start-up.
* ``next_close``: every bucket that starts before it has its ``_SUCCESS.json``.
  A crash between writing a manifest and saving this file is recovered by
  seeing the manifest and moving on.
* ``markers``: each gateway's latest watermark (µs) among messages
  ``<= committed_seq``; ``buckets``: duplicate and skew counts of open buckets,
  for their manifests.

The file is replaced atomically (temp, fsync, rename, fsync folder) after the
flush's Parquet files are durable and before the bus messages are acknowledged:
a crash before the rename leaves the previous checkpoint, and the messages after
it are redelivered and processed again.
"""

from __future__ import annotations

from pathlib import Path

import msgspec

from hourglass.durable import durable_write_bytes


class BucketCounts(msgspec.Struct):
    duplicates: int = 0
    skewed: int = 0


class LoaderState(msgspec.Struct, kw_only=True):
    committed_seq: int = 0
    next_close: int | None = None  # epoch seconds of the oldest open bucket
    markers: dict[str, int] = {}
    buckets: dict[int, BucketCounts] = {}


def load_state(path: Path) -> LoaderState:
    if not path.exists():
        return LoaderState()
    return msgspec.json.decode(path.read_bytes(), type=LoaderState)


def save_state(path: Path, state: LoaderState) -> None:
    durable_write_bytes(path, msgspec.json.encode(state))


def copy_state(state: LoaderState) -> LoaderState:
    """A deep copy: a change is made on a copy, saved, and only then kept in memory."""
    return msgspec.json.decode(msgspec.json.encode(state), type=LoaderState)
