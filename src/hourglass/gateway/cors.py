"""CORS: which web pages may send to the gateway (the Fetch standard's protocol).

A browser sends ``Origin`` with every cross-origin request, and first asks with a
preflight ``OPTIONS`` (``Access-Control-Request-Method``) for any request that is
not "simple" (JSON bodies, auth headers).  Origins listed in ``cors_origins``
get the preflight's permission and, on their requests, the
``Access-Control-Allow-Origin`` that lets the page read the answer.  Credentials
(cookies) are never allowed: browsers' keys are publishable API keys sent as
headers or in the body, limited to their types by the keys file.

A request from any other origin is refused with 403 and not ingested, even a
"simple" one (``text/plain``, ``sendBeacon``) that a browser sends without asking
first: the answer being unreadable to the page would not keep the events out.
Requests without ``Origin`` (every non-browser client) are not affected.
"""

from __future__ import annotations

from collections.abc import Iterable

Headers = list[tuple[bytes, bytes]]

# What a page may send: the CloudEvents binary mode's ce-* headers, the body's
# type and encoding, and the API key.
ALLOWED_HEADERS = frozenset(
    {"content-type", "content-encoding", "authorization", "x-api-key"}
    | {f"ce-{a}" for a in ("id", "source", "type", "specversion", "time", "subject", "dataschema")}
)
MAX_AGE_S = 600  # browsers cache a preflight's answer this long (Chromium caps it at 7200)


class Cors:
    def __init__(self, origins: Iterable[str]) -> None:
        self.origins = frozenset(origins)

    def allows(self, origin: str) -> bool:
        return origin in self.origins

    def preflight(self, origin: str, headers: dict[str, str]) -> Headers:
        """The answer's headers to an allowed origin's preflight: the methods, and
        those of the requested headers the gateway reads (the browser refuses the
        request if one it needs is missing)."""
        asked = headers.get("access-control-request-headers", "")
        granted = [h for h in (a.strip().lower() for a in asked.split(",")) if h in ALLOWED_HEADERS]
        out = self.simple(origin)
        out += [
            (b"access-control-allow-methods", b"POST, GET"),
            (b"access-control-max-age", str(MAX_AGE_S).encode()),
        ]
        if granted:
            out.append((b"access-control-allow-headers", ", ".join(granted).encode()))
        return out

    @staticmethod
    def simple(origin: str) -> Headers:
        """The headers every answer to an allowed origin carries."""
        return [
            (b"access-control-allow-origin", origin.encode("latin-1")),
            (b"access-control-expose-headers", b"retry-after"),
            (b"vary", b"Origin"),
        ]
