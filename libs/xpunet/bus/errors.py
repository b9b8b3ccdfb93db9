"""The bus's own errors; ``xpunet.bus.nats`` maps every nats-py error into one of these at the boundary.

Callers decide on the class: ``BusUnavailable`` is temporary (retry later),
``CasConflict`` is the expected outcome of a lost race, ``InvalidKey`` and
``BusError`` are permanent for the given input.

The names without an ``Error`` suffix are the ones the team codes against
(hence the N818 exemptions).
"""

from __future__ import annotations


class BusError(Exception):
    """A bus operation failed (the message names the operation and the subject, key or bucket)."""


class BusUnavailable(BusError):  # noqa: N818
    """The server could not be reached or did not answer in time; the operation may be retried."""


class BusClosed(BusUnavailable):
    """The connection was drained or closed by this process; no retry will help."""


class InvalidKey(BusError, ValueError):  # noqa: N818
    """A KV key, key prefix or bucket name that NATS does not accept."""


class BucketNotFound(BusError):  # noqa: N818
    """The KV bucket does not exist (and was not to be created)."""


class CasConflict(BusError):  # noqa: N818
    """compare-and-set found the key at another revision than expected."""

    def __init__(self, bucket: str, key: str, expected: int, detail: str = "") -> None:
        self.bucket = bucket
        self.key = key
        self.expected = expected
        what = "to be absent" if expected == 0 else f"at revision {expected}"
        super().__init__(f"{bucket}/{key}: expected {what}{': ' + detail if detail else ''}")
