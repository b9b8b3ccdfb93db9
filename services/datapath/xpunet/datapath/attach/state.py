"""Where the attach server keeps its state: a local JSON file, replaced atomically.

Written after every change and before the reply goes out, so a datapath
restart finds every attachment it ever acknowledged.  A write goes to a
temporary file in the same directory, is fsynced, then renamed over the old
one (and the directory fsynced): a crash leaves either the old or the new
state, never a torn one.  `GroupCommit` shares those writes between
concurrent changes.
"""

from __future__ import annotations

import asyncio
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol


class StateError(Exception):
    """The state file exists but cannot be read."""


class StateStore(Protocol):
    def load(self) -> dict[str, Any] | None: ...

    def save(self, data: dict[str, Any]) -> None: ...


class JsonStateFile:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def load(self) -> dict[str, Any] | None:
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return None
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise StateError(f"attach state {self.path} is not JSON: {exc}") from exc
        if not isinstance(data, dict):
            raise StateError(f"attach state {self.path} is not a JSON object")
        return data

    def save(self, data: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w") as handle:
                json.dump(data, handle, separators=(",", ":"), sort_keys=True)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        dir_fd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


class GroupCommit:
    """Durable writes of a state store, shared between concurrent changes (group commit).

    `persist()` returns once a write that includes every change made before the
    call is on disk.  At most one write runs at a time, in a worker thread (the
    fsyncs take milliseconds); changes made meanwhile are all covered by the
    next write.  So twenty concurrent Attach calls cost a few writes, not twenty
    queued one behind the other, and the event loop is never blocked on a disk.
    """

    def __init__(self, store: StateStore, snapshot: Callable[[], dict[str, Any]]) -> None:
        self.store = store
        self._snapshot = snapshot
        self._changes = 0  # changes made so far
        self._saved = 0  # changes covered by the last completed write
        self._write: asyncio.Future[None] | None = None
        self.writes = 0

    async def persist(self) -> None:
        """Record one change (already applied in memory) and wait until it is on disk."""
        self._changes += 1
        wanted = self._changes
        while self._saved < wanted:
            if self._write is None:
                self._write = asyncio.ensure_future(self._write_now())
            await asyncio.shield(self._write)  # a failed write fails every change waiting on it

    async def _write_now(self) -> None:
        try:
            covered = self._changes
            data = self._snapshot()  # taken on the event loop: consistent
            await asyncio.to_thread(self.store.save, data)
            self.writes += 1
            self._saved = max(self._saved, covered)
        finally:
            self._write = None
