"""A gap in stream sequence numbers stops processing; only aged-out messages pass."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from hourglass.bus.consumer import check_contiguous
from hourglass.exceptions import SequenceGap


class FakeJs:
    def __init__(self, first_seq: int) -> None:
        self.first_seq = first_seq

    async def stream_info(self, name: str) -> Any:
        return SimpleNamespace(state=SimpleNamespace(first_seq=self.first_seq))


def _msgs(*seqs: int) -> list[Any]:
    return [
        SimpleNamespace(metadata=SimpleNamespace(sequence=SimpleNamespace(stream=n))) for n in seqs
    ]


async def test_contiguous_and_redelivered_messages_pass() -> None:
    await check_contiguous(FakeJs(1), "HG_x", 11, _msgs(9, 10, 11, 12))  # type: ignore[arg-type]


async def test_a_gap_raises() -> None:
    with pytest.raises(SequenceGap, match="got message 14, expected 12"):
        await check_contiguous(FakeJs(1), "HG_x", 11, _msgs(11, 14))  # type: ignore[arg-type]


async def test_messages_that_aged_out_are_let_go() -> None:
    await check_contiguous(FakeJs(50), "HG_x", 11, _msgs(50, 51))  # type: ignore[arg-type]
    with pytest.raises(SequenceGap):
        await check_contiguous(FakeJs(50), "HG_x", 11, _msgs(52))  # type: ignore[arg-type]
