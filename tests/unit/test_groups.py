"""The groups of tests/groups.py reach pytest-xdist's scheduler.

``make test`` runs ``--dist loadgroup``, which keeps a group on one worker by a
suffix of the node id; pytest 9.2 silently stopped that from taking effect
(pytest-dev/pytest-xdist#1386) and the timing tests ran two at once. This test
fails if that happens again.
"""

from __future__ import annotations

import pytest

from tests.groups import TIMING


@TIMING
def test_a_grouped_test_carries_its_group_under_loadgroup(request: pytest.FixtureRequest) -> None:
    if not getattr(request.config.option, "loadgroup", False):
        pytest.skip("not under make test's --dist loadgroup")
    assert request.node.nodeid.endswith("@timing"), request.node.nodeid
