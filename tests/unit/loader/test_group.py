"""A loader's fair share of the group's streams (``loader/owner.py``, ``Group``)."""

from __future__ import annotations

from hourglass.loader.owner import Group


def test_a_loader_alone_takes_every_stream() -> None:
    g = Group(8)
    for n in range(8):
        assert g.may_take(f"s{n}")
        g.owns.add(f"s{n}")
    assert g.share == 8 and not any(g.should_hand_over(s) for s in g.owns)


def test_a_joining_loader_makes_the_others_hand_over_one_stream_at_a_time() -> None:
    g = Group(8)
    g.owns = {f"s{n}" for n in range(8)}
    g.members = 3
    assert g.share == 3
    handed = []
    while True:
        over = [s for s in sorted(g.owns) if g.should_hand_over(s)]
        assert len(over) <= 1, "one at a time"
        if not over:
            break
        handed.append(over[0])
        g.owns.discard(over[0])
    assert handed == ["s7", "s6", "s5", "s4", "s3"] and len(g.owns) == 3
    assert not g.may_take("s7"), "at its share it takes nothing more"
    assert g.may_take("s0"), "what it owns it keeps"


def test_leases_being_asked_for_count_in_the_share() -> None:
    """Every stream of a loader asks for its lease at the same moment: the ones
    still waiting for an answer hold a place, or all would win."""
    g = Group(6)
    g.members = 2
    asking = []
    for s in ["a", "b", "c", "d"]:
        if g.may_take(s):
            g.taking += 1
            asking.append(s)
    assert asking == ["a", "b", "c"], "the share is 3"
    g.taking -= 1
    g.owns.add("a")
    assert not g.may_take("d")


def test_without_balance_a_loader_takes_every_free_stream() -> None:
    g = Group(4, balance=False)
    g.members = 3
    g.owns = {"a", "b", "c"}
    assert g.share == 4 and g.may_take("d") and not g.should_hand_over("c")


def test_shares_cover_every_stream_whatever_the_count() -> None:
    for streams in range(1, 20):
        for members in range(1, 8):
            g = Group(streams)
            g.members = members
            assert g.share * members >= streams, "some stream would have no owner"
            assert g.share - 1 < streams / members or g.share == 1
