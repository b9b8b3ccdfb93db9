"""xpunet's own errors for a programmable target (P4Runtime server or kernel).

Library errors (gRPC status codes, the per-update ``p4.v1.Error`` details) are
mapped once, at the client boundary, into these classes; nothing above the
client sees grpc.  Pure: the gRPC code travels as its name ("NOT_FOUND").

* :class:`RetryableTargetError`: the cause may go away (target unreachable or
  restarting, not primary yet, resource pressure); retry with backoff.
* :class:`PermanentTargetError`: the request itself is wrong for this target
  (invalid entry, duplicate insert, missing entry); retrying the same request
  fails the same way.

For a batched Write, :attr:`TargetError.updates` holds one
:class:`UpdateError` per failed update, with its index in the caller's
sequence, so the caller can report each rejection with the intent it came from.
"""

from __future__ import annotations

from dataclasses import dataclass

# gRPC codes whose cause may be transient: retry with backoff.
RETRYABLE_CODES = frozenset(
    {
        "UNAVAILABLE",
        "DEADLINE_EXCEEDED",
        "RESOURCE_EXHAUSTED",
        "ABORTED",
        "CANCELLED",
        "PERMISSION_DENIED",  # not (yet) primary: arbitration may still make us primary
        "FAILED_PRECONDITION",  # e.g. no pipeline yet: the caller (re)installs it and retries
        "INTERNAL",
        "UNKNOWN",
    }
)


@dataclass(frozen=True, slots=True)
class UpdateError:
    """One rejected update of a batched Write."""

    index: int  # position in the caller's sequence of updates
    code: str  # canonical gRPC code name, e.g. "ALREADY_EXISTS"
    message: str
    space: str = ""  # target-specific error space, when the target gives one
    target_code: int = 0

    @property
    def retryable(self) -> bool:
        return self.code in RETRYABLE_CODES

    def __str__(self) -> str:
        return f"update {self.index}: {self.code}: {self.message}"


class TargetError(Exception):
    """A request to the target failed.  ``code`` is the overall gRPC code name."""

    def __init__(self, code: str, message: str, updates: tuple[UpdateError, ...] = ()) -> None:
        self.code = code
        self.message = message
        self.updates = updates
        detail = ""
        if updates:
            shown = "; ".join(str(u) for u in updates[:5])
            more = f" (+{len(updates) - 5} more)" if len(updates) > 5 else ""
            detail = f" [{len(updates)} update(s) failed: {shown}{more}]"
        super().__init__(f"{code}: {message}{detail}")


class RetryableTargetError(TargetError):
    """The target could not do it now; the same request may succeed later."""


class PermanentTargetError(TargetError):
    """The target rejected the request; retrying it unchanged will fail again."""


def classify(code: str, message: str, updates: tuple[UpdateError, ...] = ()) -> TargetError:
    """Pick the error class: retryable if the call, or any failed update, may succeed later."""
    if updates:
        # In a rolled-back batch the innocent updates report ABORTED; the culprits decide.
        culprits = [u for u in updates if u.code != "ABORTED"] or list(updates)
        retryable = any(u.retryable for u in culprits)
    else:
        retryable = code in RETRYABLE_CODES
    cls = RetryableTargetError if retryable else PermanentTargetError
    return cls(code, message, updates)
