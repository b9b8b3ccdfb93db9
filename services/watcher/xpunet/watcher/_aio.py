"""A guard for retry loops: never let an error caught during cancellation swallow the cancellation."""

from __future__ import annotations

import asyncio


def raise_if_cancelling() -> None:
    """Raise ``CancelledError`` if the current task has a pending cancel request.

    A library may turn the ``CancelledError`` it received into its own error (or a
    ``TaskGroup`` may report a child's error instead of the cancellation); a
    retry loop that catches that error must still stop when asked to.
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError
