"""Optional API keys: a TOML file mapping each key to the event types it may send.

```toml
[keys]
"k-3f9a..." = ["music.PlaybackStarted", "music.SongSkipped"]
"k-admin"   = "*"
"wk-7c1e..." = { name = "website", types = ["segment.*"] }
```

A type ending in ``.*`` allows every type of that prefix.  A key's ``name`` is
what its events carry as their ``source`` where the protocol has none of its own
(Segment's: gateway/segment.py), so the key itself is never stored; a key without
one is named ``key-`` and the first 12 hex digits of its SHA-256.

Keys arrive as ``Authorization: Bearer <key>``, ``X-Api-Key: <key>``, or HTTP
Basic with the key as user name (as Segment's SDKs send it).  A request with a
missing or unknown key gets 401; one that carries a type the key may not send
gets 403 and nothing in it is accepted.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hourglass.exceptions import ConfigError, Unauthorized

ANY = "*"


@dataclass(frozen=True)
class Key:
    name: str
    types: frozenset[str]


class ApiKeys:
    def __init__(self, keys: dict[str, Key]) -> None:
        self._keys = keys

    @classmethod
    def load(cls, path: Path) -> ApiKeys:
        try:
            data = tomllib.loads(path.read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"api keys file {path}: {exc}") from exc
        table = data.get("keys")
        if not isinstance(table, dict) or not table:
            raise ConfigError(f"api keys file {path}: needs a non-empty [keys] table")
        keys = {key: _entry(path, key, value) for key, value in table.items()}
        names = [k.name for k in keys.values()]
        if len(set(names)) != len(names):
            raise ConfigError(f"api keys file {path}: two keys have one name")
        return cls(keys)

    def allowed(self, headers: dict[str, str]) -> frozenset[str]:
        """The types the request's key may send; 401 if there is no valid key."""
        return self.key(presented(headers)).types

    def key(self, presented: str | None) -> Key:
        if not presented:
            raise Unauthorized("missing API key: send Authorization: Bearer <key>", status=401)
        for key, entry in self._keys.items():
            if hmac.compare_digest(key.encode(), presented.encode()):
                return entry
        raise Unauthorized("unknown API key", status=401)

    @staticmethod
    def permits(allowed: frozenset[str], type_name: str) -> bool:
        """Whether a key with ``allowed`` types may send ``type_name``."""
        if ANY in allowed or type_name in allowed:
            return True
        return any(t.endswith(".*") and type_name.startswith(t[:-1]) for t in allowed)

    @staticmethod
    def check_types(allowed: frozenset[str], types: Iterable[str]) -> None:
        refused = sorted(t for t in set(types) if not ApiKeys.permits(allowed, t))
        if refused:
            raise Unauthorized(
                f"this API key may not send event type(s): {', '.join(refused)}", status=403
            )


def presented(headers: dict[str, str]) -> str | None:
    """The key a request carries: X-Api-Key, a Bearer token, or Basic's user name."""
    key = headers.get("x-api-key")
    if key is not None:
        return key
    auth = headers.get("authorization", "")
    scheme = auth[:7].lower()
    if scheme.rstrip() == "bearer":
        return auth[7:].strip()
    if scheme[:6] == "basic ":
        try:
            user = base64.b64decode(auth[6:].strip(), validate=True).decode().split(":", 1)[0]
        except (binascii.Error, UnicodeDecodeError):
            raise Unauthorized(
                "Authorization: Basic is not base64 of user:password", status=401
            ) from None
        return user
    return None


def _entry(path: Path, key: str, value: Any) -> Key:
    name = "key-" + hashlib.sha256(key.encode()).hexdigest()[:12]
    if isinstance(value, dict):
        name = value.get("name", name)
        value = value.get("types")
        if not isinstance(name, str) or not name:
            raise ConfigError(f"api keys file {path}: key {key[:4]}...: name must be a string")
    if value == ANY:
        return Key(name, frozenset({ANY}))
    if isinstance(value, list) and all(isinstance(t, str) for t in value):
        return Key(name, frozenset(value))
    raise ConfigError(
        f'api keys file {path}: key {key[:4]}...: types must be "*" or a list of types'
    )
