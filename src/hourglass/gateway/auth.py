"""Optional API keys: a TOML file mapping each key to the event types it may send.

```toml
[keys]
"k-3f9a..." = ["music.PlaybackStarted", "music.SongSkipped"]
"k-admin"   = "*"
```

Keys arrive as ``Authorization: Bearer <key>`` or ``X-Api-Key: <key>``.  A request
with a missing or unknown key gets 401; one that carries a type the key may not
send gets 403 and nothing in it is accepted.
"""

from __future__ import annotations

import hmac
import tomllib
from collections.abc import Iterable
from pathlib import Path

from hourglass.exceptions import ConfigError, Unauthorized

ANY = "*"


class ApiKeys:
    def __init__(self, keys: dict[str, frozenset[str]]) -> None:
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
        keys: dict[str, frozenset[str]] = {}
        for key, allowed in table.items():
            if allowed == ANY:
                keys[key] = frozenset({ANY})
            elif isinstance(allowed, list) and all(isinstance(t, str) for t in allowed):
                keys[key] = frozenset(allowed)
            else:
                raise ConfigError(
                    f'api keys file {path}: key {key[:4]}...: value must be "*" or a list of types'
                )
        return cls(keys)

    def allowed(self, headers: dict[str, str]) -> frozenset[str]:
        """The types the request's key may send; 401 if there is no valid key."""
        presented = headers.get("x-api-key")
        auth = headers.get("authorization", "")
        if presented is None and auth[:7].lower() == "bearer ":
            presented = auth[7:].strip()
        if not presented:
            raise Unauthorized("missing API key: send Authorization: Bearer <key>", status=401)
        for key, types in self._keys.items():
            if hmac.compare_digest(key.encode(), presented.encode()):
                return types
        raise Unauthorized("unknown API key", status=401)

    @staticmethod
    def check_types(allowed: frozenset[str], types: Iterable[str]) -> None:
        if ANY in allowed:
            return
        refused = sorted(set(types) - allowed)
        if refused:
            raise Unauthorized(
                f"this API key may not send event type(s): {', '.join(refused)}", status=403
            )
