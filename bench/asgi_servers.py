"""ASGI server comparison for the Hourglass HTTP gateway's transport ceiling.

Serves a trivial raw ASGI app (read the whole request body, answer 200 with a
~40-byte JSON body) under uvicorn (httptools + uvloop) and granian (ASGI
interface), at 1 and 2 workers, and loads it with ``wrk``: POST of a batch of
100 CloudEvents (~160 bytes each, ~16 KB), keep-alive, 64 connections, a
warm-up run, then a measured run. Configurations are interleaved run by run so
that drift on a shared machine spreads over all of them; medians are reported.

Run from the repository root::

    python bench/asgi_servers.py [--duration 10] [--runs 3] [--pin both]

``--pin on`` puts the server on core 0 and wrk on core 1 (the server then has
one core, so 2 workers cannot gain there); ``--pin off`` lets them share both
cores. ``wrk`` must be on PATH (Debian: ``apt-get install wrk``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import resource
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
APP = "bench.asgi_servers:app"
EVENTS_PER_REQUEST = 100
CONNECTIONS = 64


# --------------------------------------------------------------------------- app


async def app(scope, receive, send):
    """Raw ASGI app: drain the body, answer 200 with a small JSON body."""
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] != "http":
        return
    received = 0
    more_body = True
    while more_body:
        message = await receive()
        received += len(message.get("body", b""))
        more_body = message.get("more_body", False)
    body = b'{"ok":true,"accepted":100,"bytes":%d}' % received
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


# ------------------------------------------------------------------------ servers


@dataclass(frozen=True)
class Server:
    name: str
    argv: tuple[str, ...]  # {port} and {workers} are filled in

    def command(self, port: int, workers: int) -> list[str]:
        return [a.format(port=port, workers=workers) for a in self.argv]


BIN = Path(sys.executable).parent
COMMON = f"{APP} --host 127.0.0.1 --port {{port}} --workers {{workers}} --no-access-log"
SERVERS = (
    Server(
        "uvicorn httptools+uvloop",
        (str(BIN / "uvicorn"), *f"{COMMON} --http httptools --loop uvloop".split()),
    ),
    Server(
        "granian asgi (defaults)",
        (str(BIN / "granian"), *f"{COMMON} --interface asgi".split()),
    ),
    Server(
        "granian asgi --loop uvloop",
        (str(BIN / "granian"), *f"{COMMON} --interface asgi --loop uvloop".split()),
    ),
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(port: int, timeout: float = 20.0) -> None:
    """Until the server answers a POST with 200 (every worker gets the chance)."""
    import httpx  # only the parent process needs it, not the server workers

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            r = httpx.post(f"http://127.0.0.1:{port}/", content=b"[]", timeout=1.0)
            if r.status_code == 200:
                time.sleep(1.0)  # let the remaining workers finish booting
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"server on port {port} did not answer within {timeout}s")


def session_cpu_seconds(sid: int) -> float:
    """User+system CPU of every live process in session ``sid`` (server + workers)."""
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[3]) == sid:  # field 6 of stat: session id
                total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / os.sysconf("SC_CLK_TCK")


def stop(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGINT)
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


# --------------------------------------------------------------------------- load


def batch_body() -> bytes:
    events = [
        {
            "specversion": "1.0",
            "id": f"0b6f3c1e-7a52-4d0e-9f1a-{i:012d}",
            "source": "/shop",
            "type": "order.created",
            "time": "2024-05-01T12:00:00Z",
            "data": {"order": i, "qty": 2},
        }
        for i in range(EVENTS_PER_REQUEST)
    ]
    return json.dumps(events, separators=(",", ":")).encode()


def wrk_script(body: bytes, directory: str) -> str:
    path = Path(directory) / "post.lua"
    path.write_text(
        'wrk.method = "POST"\n'
        'wrk.headers["Content-Type"] = "application/cloudevents-batch+json"\n'
        f"wrk.body = [==[{body.decode()}]==]\n"
    )
    return str(path)


_UNIT = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}


def _ms(text: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text).groups()
    return float(number) * _UNIT[unit]


def parse_wrk(out: str) -> dict[str, float]:
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    p50 = _ms(re.search(r"^\s+50%\s+(\S+)", out, re.M).group(1))
    p99 = _ms(re.search(r"^\s+99%\s+(\S+)", out, re.M).group(1))
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    errors = re.search(r"Socket errors:.*", out)
    return {
        "rps": rps,
        "p50": p50,
        "p99": p99,
        "non2xx": int(bad.group(1)) if bad else 0,
        "sockerr": sum(int(n) for n in re.findall(r"\d+", errors.group(0))) if errors else 0,
    }


def run_wrk(port: int, script: str, seconds: int, pin: bool) -> tuple[str, float]:
    """Run wrk; return its output and the CPU seconds wrk itself used."""
    cmd = [
        "wrk",
        "-t1",
        f"-c{CONNECTIONS}",
        f"-d{seconds}s",
        "--latency",
        "-s",
        script,
        f"http://127.0.0.1:{port}/",
    ]
    if pin:
        cmd = ["taskset", "-c", "1", *cmd]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return out, cpu


def measure(server: Server, workers: int, pin: bool, args, script: str) -> dict[str, float]:
    port = free_port()
    cmd = server.command(port, workers)
    if pin:
        cmd = ["taskset", "-c", "0", *cmd]
    log = tempfile.TemporaryFile()
    proc = subprocess.Popen(cmd, cwd=REPO, start_new_session=True, stdout=log, stderr=log)
    try:
        try:
            wait_ready(port)
        except RuntimeError:
            log.seek(0)
            sys.stderr.write(log.read().decode(errors="replace"))
            raise
        run_wrk(port, script, args.warmup, pin)
        cpu0 = session_cpu_seconds(proc.pid)
        out, wrk_cpu = run_wrk(port, script, args.duration, pin)
        server_cpu = session_cpu_seconds(proc.pid) - cpu0
    finally:
        stop(proc)
        log.close()
    result = parse_wrk(out)
    result["server_cores"] = server_cpu / args.duration
    result["wrk_cores"] = wrk_cpu / args.duration
    return result


# ------------------------------------------------------------------------ report


def versions() -> str:
    import granian
    import uvicorn
    import uvloop

    wrk = subprocess.run(["wrk", "-v"], capture_output=True, text=True)
    wrk_version = (wrk.stdout + wrk.stderr).splitlines()[0].strip()
    return (
        f"python {sys.version.split()[0]}, uvicorn {uvicorn.__version__}, "
        f"granian {granian.__version__}, uvloop {uvloop.__version__}, {wrk_version}, "
        f"{os.cpu_count()} CPUs"
    )


def report(results: dict[tuple[str, int, bool], list[dict[str, float]]]) -> None:
    head = (
        f"{'server':<28}{'w':>4}{'pin':>5}{'req/s':>9}{'events/s':>10}"
        f"{'p50 ms':>8}{'p99 ms':>8}{'srv cpu':>8}{'wrk cpu':>8}  req/s runs"
    )
    print(head)
    print("-" * len(head))
    for (name, workers, pin), runs in results.items():

        def med(key, runs=runs):
            return statistics.median(r[key] for r in runs)

        errors = sum(r["non2xx"] + r["sockerr"] for r in runs)
        spread = " ".join(f"{r['rps']:.0f}" for r in runs)
        print(
            f"{name:<28}{workers:>4}{'yes' if pin else 'no':>5}{med('rps'):>9.0f}"
            f"{med('rps') * EVENTS_PER_REQUEST:>10.0f}{med('p50'):>8.2f}{med('p99'):>8.2f}"
            f"{med('server_cores'):>8.2f}{med('wrk_cores'):>8.2f}  {spread}"
            + (f"  ERRORS={errors}" if errors else "")
        )
    print("(w = server workers; srv/wrk cpu = cores used by server processes / by wrk)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=int, default=10, help="measured seconds per run")
    parser.add_argument("--warmup", type=int, default=2, help="warm-up seconds per run")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--pin", choices=["off", "on", "both"], default="off")
    args = parser.parse_args()

    pins = {"off": [False], "on": [True], "both": [False, True]}[args.pin]
    body = batch_body()
    print(versions())
    print(
        f"body {len(body)} bytes ({EVENTS_PER_REQUEST} events), {CONNECTIONS} connections, "
        f"wrk -t1, {args.warmup}s warm-up + {args.duration}s x {args.runs} runs\n"
    )
    configs = [(s, w, p) for p in pins for w in args.workers for s in SERVERS]
    results: dict[tuple[str, int, bool], list[dict[str, float]]] = {
        (s.name, w, p): [] for s, w, p in configs
    }
    with tempfile.TemporaryDirectory() as tmp:
        script = wrk_script(body, tmp)
        for run in range(1, args.runs + 1):
            for server, workers, pin in configs:
                r = measure(server, workers, pin, args, script)
                results[(server.name, workers, pin)].append(r)
                print(
                    f"run {run}: {server.name:<28} w={workers} pin={pin!s:<5} "
                    f"{r['rps']:8.0f} req/s  p50 {r['p50']:.2f} ms  p99 {r['p99']:.2f} ms",
                    flush=True,
                )
    print()
    report(results)


if __name__ == "__main__":
    main()
