"""Bus messages the loader cannot convert, set aside: ``<data-dir>/loader/quarantine/<stream>/``.

A message that no schema version can turn into rows (the gateway validated it,
so this is a bug or a schema change gone wrong) is written whole to
``<seq>.ndjson`` (durable: temp, fsync, rename) and the rest of its batch goes
on.  Nothing is dropped: the file is the message.

The folder is bounded by ``quarantine_max_bytes``.  At the bound the stream does
not drop or skip: the write fails with ``EDQUOT``, which the service treats as a
full lake (``loader/service.py``): the stream pauses, logs it once, sets
``hourglass_loader_lake_full`` and tries again every few seconds, its messages
unacknowledged on the bus.  Emptying the folder (after reading it) or raising
the bound lets it go on by itself.
"""

from __future__ import annotations

import errno
from collections.abc import Callable
from pathlib import Path

import msgspec
import pyarrow as pa

from hourglass import log
from hourglass.bus.consumer import BusMessage
from hourglass.durable import durable_write_bytes

logger = log.get("hourglass.loader")


class Quarantine:
    def __init__(self, folder: Path, max_bytes: int = 0) -> None:
        self.folder = folder
        self.max_bytes = max_bytes  # 0: no bound

    def held(self, but: Path | None = None) -> int:
        """Bytes in the folder (leaving out ``but``, about to be written again)."""
        if not self.folder.exists():
            return 0
        return sum(p.stat().st_size for p in self.folder.iterdir() if p != but)

    def keep(self, seq: int, data: bytes) -> tuple[Path, int]:
        """Set message ``seq`` aside; its path and the bytes the folder holds now.

        Raises ``OSError(EDQUOT)`` if that would pass ``max_bytes``.  A retry of
        the same message rewrites the same file, so it is counted once.
        """
        path = self.folder / f"{seq:020d}.ndjson"
        held = self.held(but=path)
        if self.max_bytes and held + len(data) > self.max_bytes:
            raise OSError(
                errno.EDQUOT,
                f"the quarantine {self.folder} holds {held} bytes, {len(data)} more would pass "
                f"quarantine_max_bytes ({self.max_bytes}): the stream waits, its messages stay "
                "on the bus; read and empty the folder, or raise the bound",
            )
        durable_write_bytes(path, data)
        return path, held + len(data)

    def convert_each(
        self,
        messages: list[BusMessage],
        convert: Callable[[bytes], pa.Table],
        on_quarantined: Callable[[int, int], None],
        stream: str,
    ) -> pa.Table | None:
        """Rows of each message that converts; every other one set aside here.

        The loader's fallback for a batch that did not convert as a whole.
        """
        tables = []
        for message in messages:
            if message.marker is not None or not message.data:
                continue
            try:
                tables.append(convert(message.data))
            except (pa.ArrowException, msgspec.MsgspecError, ValueError) as exc:
                path, held = self.keep(message.seq, message.data)
                on_quarantined(1, held)
                logger.error(
                    "message quarantined",
                    extra={
                        "stream": stream,
                        "stream_seq": message.seq,
                        "path": str(path),
                        "error": str(exc),
                    },
                )
        return pa.concat_tables(tables) if tables else None
