"""Named crash points, for chaos tests that kill a process at a precise moment.

``HOURGLASS_CRASHPOINT=<name>[:<n>]`` makes the ``n``-th (default first) pass
through ``crashpoint(name)`` send SIGKILL to the process itself: a real kill -9,
not an exception, so nothing is flushed or cleaned up.  Unset, it costs one
dictionary lookup.
"""

from __future__ import annotations

import os
import signal

_SPEC = os.environ.get("HOURGLASS_CRASHPOINT", "")
_NAME, _, _COUNT = _SPEC.partition(":")
_left = int(_COUNT or 1)


def crashpoint(name: str) -> None:
    global _left
    if name != _NAME:
        return
    _left -= 1
    if _left <= 0:
        os.kill(os.getpid(), signal.SIGKILL)
