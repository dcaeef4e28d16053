"""The project's exception tree.

Library errors (nats-py, msgspec, OS) are translated into these at the boundary
with ``raise ... from exc`` so callers handle one vocabulary.  Retryable errors
(the client should try again later, nothing was acknowledged) are kept apart
from permanent ones (the input or the configuration is wrong)::

    HourglassError
    ├── ConfigError              bad settings, flags or files: fix and restart
    │   └── SchemaError          an .avsc file cannot be compiled (file and field named)
    ├── InvalidInput             permanent: the request or event is wrong
    │   ├── BodyTooLarge         413: a size or count limit was exceeded
    │   ├── Unauthorized         401/403: missing key, or type not allowed for the key
    │   ├── Unparseable          400: the body cannot be read as events (it is kept)
    │   ├── EmptyBatch           400: an empty array (nothing to keep)
    │   └── UnsupportedMediaType 415: a Content-Type or Content-Encoding not spoken
    ├── Retryable                transient: retry after ``retry_after`` seconds
    │   ├── Overloaded           429: too much work in flight
    │   ├── BusUnavailable       503: the bus is unreachable, full or did not ack
    │   └── LakeUnavailable      the lake's object store did not answer (loader retries)
    ├── SpoolFull                back-pressure in the SDK: the spool is at its bound
    ├── SequenceGap              the loader missed bus messages: it reads again
    └── BusError                 the bus refused a request (stream set-up, consumer)
        └── BusNotFound          a stream, consumer, KV bucket or key is not there (yet)

``bus/errors.py`` maps nats-py's errors onto ``BusUnavailable``, ``BusError``
and ``BusNotFound``; nothing outside ``bus/`` catches a nats-py error itself.
"""

from __future__ import annotations


class HourglassError(Exception):
    """Base of every error Hourglass raises on purpose."""


class ConfigError(HourglassError):
    """Settings, flags or files are wrong; the process cannot start as asked."""


class SchemaError(ConfigError):
    """An Avro schema cannot be compiled; the message names the file and field."""


class InvalidInput(HourglassError):
    """Permanent: the request or event is wrong and retrying will not help."""

    status = 400


class BodyTooLarge(InvalidInput):
    """A body, event or count limit was exceeded; the message names the limit."""

    status = 413


class Unauthorized(InvalidInput):
    """Credentials are missing or wrong (401) or a type is not allowed (403)."""

    def __init__(self, message: str, *, status: int = 401) -> None:
        super().__init__(message)
        self.status = status


class Unparseable(InvalidInput):
    """The body cannot be read as events: it is kept whole in the failed stream."""


class EmptyBatch(InvalidInput):
    """An empty array: a client bug, but nothing to keep."""


class UnsupportedMediaType(InvalidInput):
    status = 415


class Retryable(HourglassError):
    """Transient: nothing was acknowledged; the client retries after a while."""

    status = 503

    def __init__(self, message: str, *, retry_after: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class Overloaded(Retryable):
    """Too much work is in flight in this gateway."""

    status = 429


class BusUnavailable(Retryable):
    """The bus is unreachable, a stream is full, or a publish was not acknowledged."""

    status = 503


class LakeUnavailable(Retryable):
    """The lake's object store (S3) did not answer or failed a request; nothing
    was committed, and the loader tries the step again."""


class SpoolFull(HourglassError):
    """The spool holds ``max_bytes`` of unacknowledged events and did not drain in time."""


class SequenceGap(HourglassError):
    """Messages were skipped (e.g. a dropped connection): read again from the checkpoint."""


class BusError(HourglassError):
    """The bus refused a request (creating or updating a stream, a consumer)."""


class BusNotFound(BusError):
    """A stream, consumer, KV bucket or key does not exist, or a bucket has no keys."""


class BusConflict(BusError):
    """A revision-checked write found another revision: someone else wrote first."""


class Fenced(HourglassError):
    """This loader no longer owns the stream: another took it over (``bus/ownership.py``).

    Whatever it holds that is not committed is dropped; the new owner reads it
    from the bus again.
    """
