"""The lake on S3 or an S3-compatible store (MinIO, Ceph, R2, moto): obstore.

Chosen by measurement (docs/performance.md, "The object store"): obstore's
Rust client costs well under a millisecond of CPU a request, and it sends
``If-None-Match: *`` on a PUT (``mode="create"``), which pyarrow's S3 file
system does not; boto3 costs several times more CPU per request.  That
condition is what makes :meth:`S3Store.create` once-only, so the bucket
manifest of a partitioned type is written by one loader, and a fenced loader's
late write cannot replace it.  A store that ignores the header (some older
S3-compatible servers) would break that: :func:`check_conditional` refuses to
start on one.

Credentials and region come from the standard AWS environment variables
(``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``,
``AWS_REGION``/``AWS_DEFAULT_REGION``) and ``~/.aws/credentials``/``config``
profiles (``AWS_PROFILE``), as every AWS tool reads them; ``endpoint`` (or
``AWS_ENDPOINT_URL``) points at an S3-compatible server.

Errors: a missing object is ``FileNotFoundError`` (the :class:`Store`
contract); a refused credential or permission is ``ConfigError``; anything
else the store or the network does is ``LakeUnavailable`` (retryable: the
loader's supervised loop tries again, with nothing committed).
"""

from __future__ import annotations

import configparser
import os
import tempfile
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO, TypeVar, cast

import obstore
from obstore.exceptions import (
    AlreadyExistsError,
    BaseError,
    PermissionDeniedError,
    UnauthenticatedError,
)
from obstore.store import S3Store as _ObjectStore

from hourglass.exceptions import ConfigError, LakeUnavailable
from hourglass.lake.store import Entry, Store, Writer

__all__ = ["S3Store", "check_conditional", "credentials"]

T = TypeVar("T")
# An object bigger than this is buffered in a temporary file, not in memory (a
# dedup run can be hundreds of MB; a part file is a few).
SPOOL_BYTES = 64 * 1024 * 1024


@contextmanager
def _mapped(what: str) -> Iterator[None]:
    """obstore's errors as the project's, at this boundary."""
    try:
        yield
    except FileNotFoundError:
        raise
    except (PermissionDeniedError, UnauthenticatedError) as exc:
        raise ConfigError(f"the object store refused to {what}: {exc}") from exc
    except (BaseError, OSError, RuntimeError) as exc:
        raise LakeUnavailable(f"the object store did not {what}: {exc}") from exc


def credentials(environ: dict[str, str] | None = None) -> dict[str, str]:
    """Access key, secret, token and region from the AWS environment variables,
    else from the profile of ``~/.aws/credentials`` and ``~/.aws/config``."""
    env = dict(os.environ if environ is None else environ)
    found: dict[str, str] = {}
    profile = env.get("AWS_PROFILE", "default")
    home = Path(env.get("HOME", "~")).expanduser()
    files = [
        (Path(env.get("AWS_SHARED_CREDENTIALS_FILE", home / ".aws" / "credentials")), profile),
        (
            Path(env.get("AWS_CONFIG_FILE", home / ".aws" / "config")),
            profile if profile == "default" else f"profile {profile}",
        ),
    ]
    for path, section in files:
        parser = configparser.ConfigParser()
        if path.exists() and parser.read(path) and parser.has_section(section):
            for key in (
                "aws_access_key_id",
                "aws_secret_access_key",
                "aws_session_token",
                "region",
            ):
                value = parser.get(section, key, fallback=None)
                if value and key not in found:
                    found[key] = value
    for key, names in {
        "aws_access_key_id": ["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": ["AWS_SECRET_ACCESS_KEY"],
        "aws_session_token": ["AWS_SESSION_TOKEN"],
        "region": ["AWS_REGION", "AWS_DEFAULT_REGION"],
    }.items():
        for name in names:
            if env.get(name):
                found[key] = env[name]
                break
    return found


class S3Store:
    """``s3://bucket/prefix`` as a :class:`hourglass.lake.store.Store`."""

    def __init__(self, bucket: str, prefix: str = "", *, endpoint: str | None = None) -> None:
        self.bucket, self.prefix = bucket, prefix.strip("/")
        endpoint = endpoint or os.environ.get("AWS_ENDPOINT_URL")
        self.endpoint = endpoint
        found = credentials()
        config: dict[str, Any] = {
            "region": found.get("region", "us-east-1"),
        }
        for key in ("aws_access_key_id", "aws_secret_access_key", "aws_session_token"):
            if key in found:
                config[key] = found[key]
        client: dict[str, Any] = {"timeout": "30s", "connect_timeout": "5s"}
        if endpoint:
            config["endpoint"] = endpoint
            client["allow_http"] = endpoint.startswith("http://")
        with _mapped("open the bucket"):
            self._store = _ObjectStore(
                bucket,
                prefix=self.prefix or None,
                config=config,  # type: ignore[arg-type]  # a TypedDict of str keys
                client_options=client,  # type: ignore[arg-type]
            )

    @classmethod
    def from_url(cls, url: str, *, endpoint: str | None = None) -> S3Store:
        bucket, _, prefix = url.removeprefix("s3://").partition("/")
        if not bucket:
            raise ConfigError(f"{url!r}: an S3 lake is s3://bucket[/prefix]")
        return cls(bucket, prefix, endpoint=endpoint)

    @property
    def url(self) -> str:
        return f"s3://{self.bucket}" + (f"/{self.prefix}" if self.prefix else "")

    @property
    def local(self) -> Path | None:
        return None

    def where(self, key: str) -> str:
        return f"{self.url}/{key}"

    def _call(self, what: str, call: Callable[[], T]) -> T:
        with _mapped(what):
            return call()

    def put(self, key: str, write: Writer) -> int:
        with tempfile.SpooledTemporaryFile(max_size=SPOOL_BYTES) as buffer:
            write(cast(BinaryIO, buffer))
            size = buffer.tell()
            buffer.seek(0)
            self._call(f"write {key}", lambda: obstore.put(self._store, key, buffer))
        return size

    def create(self, key: str, data: bytes, temp: str) -> bool:
        with _mapped(f"create {key}"):
            try:
                obstore.put(self._store, key, data, mode="create")
            except AlreadyExistsError:  # 412: another writer created it first
                return False
        return True

    def read(self, key: str) -> bytes:
        return self._call(f"read {key}", lambda: bytes(obstore.get(self._store, key).bytes()))

    def open(self, key: str) -> BinaryIO:
        buffer = tempfile.SpooledTemporaryFile(max_size=SPOOL_BYTES)
        try:
            with _mapped(f"read {key}"):
                for chunk in obstore.get(self._store, key).stream():
                    buffer.write(chunk)
        except BaseException:
            buffer.close()
            raise
        buffer.seek(0)
        return cast(BinaryIO, buffer)

    def exists(self, key: str) -> bool:
        try:
            self._call(f"look for {key}", lambda: obstore.head(self._store, key))
        except FileNotFoundError:
            return False
        return True

    def _listing(self, folder: str) -> Any:
        prefix = folder.strip("/") or None
        return self._call(
            f"list {folder}", lambda: obstore.list_with_delimiter(self._store, prefix)
        )

    def files(self, folder: str) -> list[Entry]:
        found = self._listing(folder)
        entries = [Entry(o["path"].rsplit("/", 1)[-1], o["size"]) for o in found["objects"]]
        return sorted(entries, key=lambda e: e.name)

    def folders(self, folder: str) -> list[str]:
        found = self._listing(folder)
        return sorted(p.rstrip("/").rsplit("/", 1)[-1] for p in found["common_prefixes"])

    def rename(self, src: str, dst: str) -> bool:
        try:
            self._call(f"copy {src}", lambda: obstore.copy(self._store, src, dst))
        except FileNotFoundError:
            return False
        self.delete(src)
        return True

    def delete(self, key: str) -> None:
        try:
            self._call(f"delete {key}", lambda: obstore.delete(self._store, key))
        except FileNotFoundError:
            pass

    def sync(self, folders: Iterable[str]) -> None:
        """Nothing to do: a PUT or a copy is durable when it returns."""


def check_conditional(store: Store) -> None:
    """Refuse a store that ignores ``If-None-Match`` (it would let two loaders both
    "create" a bucket's manifest): create a probe twice; the second must fail."""
    key = f"_hourglass-probe-{uuid.uuid4().hex}"
    try:
        first = store.create(key, b"probe", key)
        second = store.create(key, b"probe", key)
    finally:
        store.delete(key)
    if not first or second:
        raise ConfigError(
            f"{store.url} does not honour conditional writes (If-None-Match): a lake "
            "shared by loaders needs them, so that one manifest is written once"
        )
