"""One mapping of nats-py's errors onto the project's tree, at the bus boundary.

nats-py raises some forty classes from three modules, and several of them are
also builtins (``nats.errors.TimeoutError`` is an ``asyncio.TimeoutError`` and
so an ``OSError``).  Code outside ``bus/`` does not catch them one by one;
it wraps its bus calls in :func:`map_nats_errors`, in the manner of httpx's
``map_exceptions``, and handles three outcomes::

    BusNotFound      a stream, consumer, KV bucket or key does not exist (or
                     a KV bucket holds no keys): usually "not created yet"
    BusUnavailable   the bus did not answer, the connection is down or
                     closing, or JetStream said it is unavailable: try later
    BusConflict      a revision-checked KV write (create, update) found another
                     revision: someone else wrote first (a BusError)
    BusError         JetStream refused the request: a configuration problem

The original error is kept as ``__cause__``.  Cancellation is never mapped.
An ``OSError`` in the block is taken for the socket's, so the block should
hold bus calls only, not file I/O.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager

import nats.errors
import nats.js.errors

from hourglass.exceptions import BusConflict, BusError, BusNotFound, BusUnavailable

__all__ = ["BusConflict", "BusError", "BusNotFound", "BusUnavailable", "map_nats_errors"]


@contextmanager
def map_nats_errors(what: str) -> Iterator[None]:
    """Raise nats-py's errors in the block as the project's, naming ``what`` was asked."""
    try:
        yield
    except (nats.js.errors.NotFoundError, nats.js.errors.NoKeysError) as exc:
        raise BusNotFound(f"{what}: {_describe(exc)}") from exc
    except nats.js.errors.KeyWrongLastSequenceError as exc:
        raise BusConflict(f"{what}: {_describe(exc)}") from exc
    except nats.js.errors.ServiceUnavailableError as exc:
        raise BusUnavailable(f"{what}: JetStream unavailable ({_describe(exc)})") from exc
    except nats.js.errors.APIError as exc:
        raise BusError(f"{what}: {_describe(exc)}") from exc
    except (nats.errors.Error, asyncio.TimeoutError, OSError) as exc:
        raise BusUnavailable(f"{what}: the bus did not answer ({exc!r})") from exc


def _describe(exc: nats.js.errors.Error) -> str:
    # KV errors (KeyNotFoundError and kin) are APIErrors that skip its __init__.
    return str(getattr(exc, "description", None) or exc)
