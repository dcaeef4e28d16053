"""Which S3 client the lake uses, by measurement: obstore, boto3, pyarrow's S3FS.

Against moto's S3 server on loopback (started here, a process of its own), each
client PUTs, GETs and LISTs the same objects; the figure that matters is the
*client's* CPU per request (``time.process_time`` of this process: moto's own
cost is in its process), since a loader's requests share its cores with the
Arrow work.  Wall time per request is printed too, but it is mostly moto's.
Also checked: whether the client can send ``If-None-Match: *`` (create once),
which the manifest of a partitioned type needs.

    python bench/object_store.py [--n 300] [--size 262144]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import httpx

from hourglass.bus.embedded import free_port


def _moto() -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            httpx.put(f"{endpoint}/bench", timeout=2).raise_for_status()
            return proc, endpoint
        except httpx.HTTPError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def _clients(endpoint: str) -> dict[str, dict[str, Callable[..., Any]]]:
    import boto3
    import obstore
    import pyarrow.fs as pafs
    from botocore.exceptions import ClientError
    from obstore.exceptions import AlreadyExistsError
    from obstore.store import S3Store

    store = S3Store(
        "bench",
        config={"endpoint": endpoint, "region": "us-east-1"},
        client_options={"allow_http": True},
    )
    boto = boto3.client("s3", endpoint_url=endpoint)
    arrow = pafs.S3FileSystem(
        endpoint_override=endpoint.removeprefix("http://"),
        scheme="http",
        region="us-east-1",
        allow_delayed_open=True,
    )

    def ob_create(key: str, data: bytes) -> bool:
        try:
            obstore.put(store, key, data, mode="create")
        except AlreadyExistsError:
            return False
        return True

    def boto_create(key: str, data: bytes) -> bool:
        try:
            boto.put_object(Bucket="bench", Key=key, Body=data, IfNoneMatch="*")
        except ClientError as exc:
            if exc.response["Error"]["Code"] in ("PreconditionFailed", "412"):
                return False
            raise
        return True

    def arrow_put(key: str, data: bytes) -> None:
        with arrow.open_output_stream(f"bench/{key}") as out:
            out.write(data)

    def arrow_get(key: str) -> bytes:
        with arrow.open_input_stream(f"bench/{key}") as f:
            return bytes(f.read())

    return {
        "obstore": {
            "put": lambda k, d: obstore.put(store, k, d),
            "get": lambda k: bytes(obstore.get(store, k).bytes()),
            "list": lambda p: obstore.list_with_delimiter(store, p),
            "create": ob_create,
        },
        "boto3": {
            "put": lambda k, d: boto.put_object(Bucket="bench", Key=k, Body=d),
            "get": lambda k: boto.get_object(Bucket="bench", Key=k)["Body"].read(),
            "list": lambda p: boto.list_objects_v2(Bucket="bench", Prefix=p, Delimiter="/"),
            "create": boto_create,
        },
        "pyarrow": {
            "put": arrow_put,
            "get": arrow_get,
            "list": lambda p: arrow.get_file_info(pafs.FileSelector(f"bench/{p}")),
            "create": None,  # no If-None-Match in pyarrow's S3 file system
        },
    }


def _measure(op: Callable[[], Any], n: int) -> tuple[float, float]:
    """(client CPU µs, wall ms) per call."""
    cpu, wall = time.process_time(), time.perf_counter()
    for _ in range(n):
        op()
    return (time.process_time() - cpu) / n * 1e6, (time.perf_counter() - wall) / n * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=300)
    parser.add_argument("--size", type=int, default=256 * 1024)
    args = parser.parse_args()
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench")
    proc, endpoint = _moto()
    try:
        data = os.urandom(args.size)
        print(f"{args.n} requests each, {args.size} B objects, moto on {endpoint}")
        print(f"{'client':10} {'op':7} {'CPU µs/req':>11} {'wall ms/req':>12}")
        for name, ops in _clients(endpoint).items():
            keys = iter(range(10**9))
            rows = {
                "put": lambda ops=ops, keys=keys, n=name: ops["put"](f"{n}/o{next(keys)}", data),
                "get": lambda ops=ops, n=name: ops["get"](f"{n}/o0"),
                "list": lambda ops=ops, n=name: ops["list"](f"{n}/"),
            }
            for op, call in rows.items():
                cpu, wall = _measure(call, args.n if op != "list" else max(1, args.n // 10))
                print(f"{name:10} {op:7} {cpu:11.0f} {wall:12.2f}")
            create = ops["create"]
            if create is None:
                print(f"{name:10} create  not supported (no conditional PUT)")
            else:
                once = create(f"{name}/once", b"a"), create(f"{name}/once", b"b")
                ok = "honoured" if once == (True, False) else f"NOT honoured {once}"
                print(f"{name:10} create  If-None-Match {ok}")
    finally:
        proc.terminate()
        proc.wait(10)


if __name__ == "__main__":
    main()
