"""The tailer's pure parts and its file handling, against real temp files (no gateway)."""

from __future__ import annotations

import os
import shutil
import threading
from pathlib import Path

import httpx
import msgspec
import pytest
import zstandard

from hourglass.producer import follow
from hourglass.producer.follow import (
    Checkpoint,
    Follower,
    StateDir,
    read_chunk,
    split_lines,
    truncated,
)
from hourglass.producer.tail import Tailer, encode_line

SOURCE = "file://host/var/log/app.log"


def append(path: Path, text: str) -> None:
    with open(path, "ab") as f:
        f.write(text.encode())


def ident(path: Path) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_dev, st.st_ino


# ----------------------------------------------------------------- ids, events


def test_derived_id_names_file_generation_and_offset() -> None:
    cp = Checkpoint("/x", dev=2049, ino=77, generation=3, offset=0, line=1)
    assert cp.line_id(120) == "2049-77-3-120"
    assert cp.line_id(120) == Checkpoint("/x", 2049, 77, 3, 500, 9).line_id(120)  # stable


def test_full_event_with_id_is_sent_as_is() -> None:
    raw = b'{"specversion":"1.0","id":"e1","source":"/s","type":"t","data":{}}'
    assert encode_line(raw, "1-2-0-0", SOURCE, None) is raw
    assert encode_line(raw, "1-2-0-0", SOURCE, "other.Type") is raw


def test_full_event_without_id_gets_the_derived_id() -> None:
    raw = b'  {"specversion":"1.0","source":"/s","type":"t","data":{"a":1}}'
    out = encode_line(raw, "1-2-0-40", SOURCE, None)
    assert isinstance(out, bytes)
    assert msgspec.json.decode(out) == {
        "id": "1-2-0-40",
        "specversion": "1.0",
        "source": "/s",
        "type": "t",
        "data": {"a": 1},
    }


def test_data_line_is_wrapped_with_type_source_and_id() -> None:
    out = encode_line(b'{"user": "u1"}\r', "1-2-0-7", SOURCE, "music.X")
    assert isinstance(out, bytes)
    assert msgspec.json.decode(out) == {
        "specversion": "1.0",
        "id": "1-2-0-7",
        "source": SOURCE,
        "type": "music.X",
        "data": {"user": "u1"},
    }


@pytest.mark.parametrize(
    ("raw", "event_type", "why"),
    [
        (b"not json at all", "t", "not JSON"),
        (b'{"cut": ', "t", "not JSON"),
        (b"[1, 2]", "t", "not a JSON object"),
        (b"42", None, "not a JSON object"),
        (b'{"user": "u1"}', None, "no specversion"),
    ],
)
def test_malformed_lines_say_why(raw: bytes, event_type: str | None, why: str) -> None:
    out = encode_line(raw, "1-2-0-0", SOURCE, event_type)
    assert isinstance(out, str) and why in out


# ------------------------------------------------------------------ splitting


def test_split_keeps_a_partial_last_line_for_later() -> None:
    data = b'{"a":1}\n\n  \n{"b":2}\n{"c":'
    lines, used, next_line = split_lines(data, 100, 5)
    assert [(x.offset, x.number, x.raw) for x in lines] == [
        (100, 5, b'{"a":1}'),
        (112, 8, b'{"b":2}'),
    ]  # blank lines counted, not listed
    assert used == data.index(b'{"c":') and next_line == 9


def test_split_final_takes_the_unterminated_line() -> None:
    lines, used, next_line = split_lines(b"x\ny", 0, 1, final=True)
    assert [x.raw for x in lines] == [b"x", b"y"] and used == 3 and next_line == 3


def test_split_stops_at_max_lines() -> None:
    lines, used, next_line = split_lines(b"a\nb\nc\n", 0, 1, max_lines=2)
    assert [x.raw for x in lines] == [b"a", b"b"] and used == 4 and next_line == 3


def test_read_chunk_waits_for_the_rest_of_a_line(tmp_path: Path) -> None:
    path = tmp_path / "f.log"
    append(path, '{"a":1}\n{"b"')
    fd = os.open(path, os.O_RDONLY)
    try:
        first = read_chunk(fd, 0, 1)
        assert [x.raw for x in first.lines] == [b'{"a":1}'] and first.data == b'{"a":1}\n'
        assert read_chunk(fd, 8, 2).data == b""
        append(path, ":2}\n")
        second = read_chunk(fd, 8, 2)
        assert [(x.offset, x.number, x.raw) for x in second.lines] == [(8, 2, b'{"b":2}')]
    finally:
        os.close(fd)


def test_read_chunk_grows_for_a_line_longer_than_a_batch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(follow, "BATCH_BYTES", 16)
    path = tmp_path / "f.log"
    append(path, "x" * 100 + "\nshort\n")
    fd = os.open(path, os.O_RDONLY)
    try:
        chunk = read_chunk(fd, 0, 1)
        assert [x.raw for x in chunk.lines][:1] == [b"x" * 100]
    finally:
        os.close(fd)


# ------------------------------------------------------------ checkpoints, files


def test_checkpoint_round_trip(tmp_path: Path) -> None:
    state = StateDir(tmp_path / "state")
    assert state.load("/var/log/a.log") is None
    cp = Checkpoint("/var/log/a.log", 1, 2, 3, 4096, 77, b"\x00\xff tail\n")
    state.save(cp)
    assert state.load("/var/log/a.log") == cp
    assert state.load("/var/log/b.log") is None
    assert [p.name for p in (tmp_path / "state").iterdir()] == [state.file(cp.path).name]


def test_truncation_detection(tmp_path: Path) -> None:
    path = tmp_path / "f.log"
    append(path, "line one\nline two\n")
    fd = os.open(path, os.O_RDONLY)
    try:
        tail_bytes = b"line one\nline two\n"[-8:]
        assert not truncated(fd, 18, tail_bytes)
        append(path, "line three\n")
        assert not truncated(fd, 18, tail_bytes)  # appended: fine
        os.truncate(path, 0)
        assert truncated(fd, 18, tail_bytes)  # shrank below the offset
        append(path, "something else entirely\n")
        assert truncated(fd, 18, tail_bytes)  # refilled past the offset: fingerprint
        assert not truncated(fd, 0, b"")
    finally:
        os.close(fd)


def drain(follower: Follower, *, once: bool = True) -> list[tuple[str, bytes]]:
    """Read and commit everything available: (derived id, raw) per line."""
    out = []
    while (chunk := follower.read(once=once)) is not None:
        assert follower.cp is not None
        out += [(follower.cp.line_id(x.offset), x.raw) for x in chunk.lines]
        follower.commit(chunk)
    return out


def test_copy_truncate_bumps_the_generation(tmp_path: Path) -> None:
    path = tmp_path / "app.log"
    append(path, "a\nb\n")
    dev, ino = ident(path)
    state = StateDir(tmp_path / "state")
    follower = Follower(path, SOURCE, state)
    assert drain(follower) == [(f"{dev}-{ino}-0-0", b"a"), (f"{dev}-{ino}-0-2", b"b")]
    first = state.load(str(path))
    shutil.copy(path, tmp_path / "app.log.1")
    os.truncate(path, 0)
    append(path, "c\n")
    assert drain(follower) == [(f"{dev}-{ino}-1-0", b"c")]
    saved = state.load(str(path))
    assert saved.session and saved.session != first.session  # a new producer session
    saved.session = ""
    assert saved == Checkpoint(str(path), dev, ino, 1, 2, 2, b"c\n")


def test_rename_rotation_finishes_the_old_file_then_follows_the_new(tmp_path: Path) -> None:
    path = tmp_path / "app.log"
    state = StateDir(tmp_path / "state")
    with open(path, "ab", buffering=0) as writer:
        writer.write(b"1\n2\n")
        old = ident(path)
        follower = Follower(path, SOURCE, state)
        assert [raw for _, raw in drain(follower, once=False)] == [b"1", b"2"]
        os.rename(path, tmp_path / "app.log.1")
        append(path, "new\n")
        writer.write(b"3\nunterminated")  # the writer has not reopened yet
        got = drain(follower, once=False)  # live: the old file is not quiet yet
        assert got == [(f"{old[0]}-{old[1]}-0-4", b"3")]
    new = ident(path)
    assert drain(follower) == [
        (f"{old[0]}-{old[1]}-0-6", b"unterminated"),
        (f"{new[0]}-{new[1]}-1-0", b"new"),
    ]


def test_restart_resumes_and_finds_a_file_rotated_while_down(tmp_path: Path) -> None:
    path = tmp_path / "app.log"
    state = StateDir(tmp_path / "state")
    append(path, "1\n2\n")
    old = ident(path)
    assert len(drain(Follower(path, SOURCE, state))) == 2
    append(path, "3\n")
    os.rename(path, tmp_path / "app.log.1")
    append(path, "x\n")
    new = ident(path)
    assert drain(Follower(path, SOURCE, state)) == [
        (f"{old[0]}-{old[1]}-0-4", b"3"),
        (f"{new[0]}-{new[1]}-1-0", b"x"),
    ]
    append(path, "y\n")
    assert drain(Follower(path, SOURCE, state)) == [(f"{new[0]}-{new[1]}-1-2", b"y")]


def test_restart_with_the_old_file_gone_starts_the_new_one_at_zero(tmp_path: Path) -> None:
    path = tmp_path / "app.log"
    state = StateDir(tmp_path / "state")
    append(path, "1\n")
    drain(Follower(path, SOURCE, state))
    os.unlink(path)
    append(path, "fresh\n")
    dev, ino = ident(path)
    assert drain(Follower(path, SOURCE, state)) == [(f"{dev}-{ino}-1-0", b"fresh")]


def test_a_path_that_does_not_exist_yet_is_waited_for(tmp_path: Path) -> None:
    path = tmp_path / "later.log"
    follower = Follower(path, SOURCE, StateDir(tmp_path / "state"))
    assert drain(follower) == []
    append(path, "1\n")
    dev, ino = ident(path)
    assert drain(follower) == [(f"{dev}-{ino}-0-0", b"1")]


# ------------------------------------------------- sending (a stand-in gateway)


class Gateway:
    """An httpx transport that answers 503 ``busy`` times, then like a gateway."""

    def __init__(self, busy: int = 0, retry_after: str = "0") -> None:
        self.busy, self.retry_after = busy, retry_after
        self.batches: list[list[dict[str, object]]] = []
        self.binary: list[tuple[dict[str, str], bytes]] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if self.busy:
            self.busy -= 1
            return httpx.Response(
                503, headers={"retry-after": self.retry_after}, json={"error": "busy"}
            )
        if "ce-specversion" in request.headers:
            self.binary.append((dict(request.headers), request.content))
            return httpx.Response(400, json={"error": "binary mode body is not valid JSON"})
        events = msgspec.json.decode(zstandard.ZstdDecompressor().decompress(request.content))
        self.batches.append(events)
        rejected = [
            {"index": i, "id": e["id"], "reason": "bad data"}
            for i, e in enumerate(events)
            if e.get("data") == {"bad": True}
        ]
        return httpx.Response(
            200, json={"accepted": len(events) - len(rejected), "rejected": rejected}
        )


def tailer(
    tmp_path: Path,
    gateway: Gateway,
    *,
    event_type: str | None = None,
    source: str | None = None,
    stop: threading.Event | None = None,
) -> Tailer:
    http = httpx.Client(base_url="http://gw", transport=httpx.MockTransport(gateway))
    return Tailer(
        [tmp_path / "app.log"],
        http,
        tmp_path / "state",
        event_type=event_type,
        source=source,
        stop=stop,
    )


def test_lines_are_sent_then_checkpointed_and_malformed_ones_go_binary(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "app.log"
    append(path, '{"a": 1}\nnot json\n{"bad": true}\n{"b": 2}\n{"partial":')
    dev, ino = ident(path)
    gateway = Gateway(busy=2)
    assert tailer(tmp_path, gateway, event_type="t.T", source="/s").run(once=True)
    [batch] = gateway.batches
    assert [(e["id"], e["type"], e["source"], e["data"]) for e in batch] == [
        (f"{dev}-{ino}-0-0", "t.T", "/s", {"a": 1}),
        (f"{dev}-{ino}-0-18", "t.T", "/s", {"bad": True}),
        (f"{dev}-{ino}-0-32", "t.T", "/s", {"b": 2}),
    ]
    [(headers, body)] = gateway.binary
    assert body == b"not json"
    assert (headers["ce-id"], headers["ce-source"], headers["ce-type"]) == (
        f"{dev}-{ino}-0-9",
        "/s",
        "t.T",
    )
    cp = StateDir(tmp_path / "state").load(str(path))
    assert cp is not None and (cp.offset, cp.line) == (41, 5)  # the partial line waits
    assert f"{path}:2: malformed line, not JSON" in caplog.text
    assert f"{path}:3: rejected: bad data" in caplog.text


def test_the_checkpoint_stays_put_while_the_gateway_does_not_answer(tmp_path: Path) -> None:
    append(tmp_path / "app.log", '{"specversion": "1.0", "type": "t", "source": "/s"}\n')
    gateway = Gateway(busy=10**9, retry_after="0.05")
    stop = threading.Event()
    threading.Timer(0.3, stop.set).start()
    assert not tailer(tmp_path, gateway, stop=stop).run(once=True)
    cp = StateDir(tmp_path / "state").load(str(tmp_path / "app.log"))
    assert cp is not None and cp.offset == 0
