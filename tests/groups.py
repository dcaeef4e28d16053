"""Groups for ``make test``'s two workers (pytest-xdist, ``--dist loadgroup``):
the tests of one group run one after another on one worker.

Without ``-n`` the marks do nothing.
"""

from __future__ import annotations

import pytest

# Tests that assert on time (a bucket closed within a minute of its end, leases
# expiring under chaos, a page's responsiveness) and run many processes: never two
# of them at once, so each has one core to itself and the other worker's load only.
TIMING = pytest.mark.xdist_group("timing")


def module(name: str) -> pytest.MarkDecorator:
    """A module whose tests share a module-scoped fixture: on one worker, so the
    fixture runs once."""
    return pytest.mark.xdist_group(name)
