"""Which files of a dedup index folder a recovering owner deletes (``dedup.py``).

An index folder holds the files its checkpoint names (runs, sealed slices'
filter columns, the producer table), files of runs that left the window and
were not deleted yet (a crash after the save), and staged files of flushes that
never committed, its own or a fenced owner's.  Kept: what the checkpoint names,
a staged file it names (recovery publishes it), and anything of a later epoch
(a later owner is writing it now).  On S3 the listing is the lake's copy of the
folder (``lake/store.py``, ``Mirrored``), so what a crash left there goes too.
"""

from __future__ import annotations

from hourglass.durable import TMP_PREFIX
from hourglass.lake.store import Store
from hourglass.loader.staging import epoch_of, final_of
from hourglass.loader.state import DedupState


def sweep_index(store: Store, folder: str, state: DedupState, epoch: int) -> int:
    """Delete the files of ``folder`` (a key) that ``state`` does not name, of
    ``epoch`` or earlier; how many."""
    named = {r.name for s in state.slices for r in s.runs}
    named |= {s.bloom for s in state.slices if s.bloom}
    named |= {state.producers} if state.producers else set()
    removed = 0
    for name in (entry.name for entry in store.files(folder)):
        if name.startswith(TMP_PREFIX):
            stamped = epoch_of(name)
            if stamped is not None and (stamped > epoch or final_of(name) in named):
                continue  # a later owner's, or committed (published by recovery)
        else:
            stamped = epoch_in_name(name)
            if name in named or stamped is None or stamped > epoch:
                continue
        store.delete(f"{folder}/{name}")
        removed += 1
    return removed


def epoch_in_name(name: str) -> int | None:
    """``run-e<epoch>-…`` / ``slice-e<epoch>-…`` / ``producers-e<epoch>-…``; None
    for a name of none of these kinds."""
    head, _, rest = name.partition("-e")
    if head not in ("run", "slice", "producers"):
        return None
    digits = rest.split("-", 1)[0]
    return int(digits) if digits.isdigit() else None
