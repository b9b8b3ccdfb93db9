"""The nftables adapter: xpunet's table in a network namespace, through libnftables or ``nft``.  I/O.

Two backends run the same text (JSON or nft's native syntax; each run is one
atomic nftables transaction):

* ``lib`` (preferred): libnftables in this process through ctypes
  (``libnft``), on one dedicated worker thread per namespace that entered the
  namespace before opening its context, so the netlink socket lives there.
  Every call of that namespace is served by that thread, in order; asyncio
  callers await it through ``run_in_executor``.  A call costs well under a
  millisecond of fixed overhead.
* ``process`` (fallback when libnftables is missing): ``ip netns exec <ns> nft
  -f -`` per call, 35-60 ms each on a loaded 2-core VM.

:func:`choose_backend` picks one and says which in the log.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal, Protocol, TypeVar

from xpunet.datapath.kernel import libnft, nlcounters
from xpunet.datapath.kernel.libnft import LibNftContext, LibNftError, RunResult
from xpunet.datapath.kernel.ruleset import FAMILY, TABLE
from xpunet.p4rt.errors import PermanentTargetError, RetryableTargetError, TargetError

log = logging.getLogger(__name__)

BackendName = Literal["lib", "process"]
T = TypeVar("T")

# Failures that say nothing about the request: nft may well succeed when asked again.
_TRANSIENT = (
    "No buffer space available",
    "Interrupted system call",
    "Cannot allocate memory",
    "Resource temporarily unavailable",
    "Device or resource busy",
    "Cannot open network namespace",
)


def _missing(exc: TargetError) -> bool:
    """The table does not exist (and not: the namespace does not)."""
    text = str(exc)
    return "No such file or directory" in text and "network namespace" not in text


class Backend(Protocol):
    name: BackendName

    async def run(self, text: str, *, json_output: bool, numeric: bool) -> RunResult: ...

    async def read_counters(self, table: str) -> dict[str, tuple[int, int]] | None:
        """The table's named counters straight from the kernel; None: use ``list counters``."""

    async def close(self) -> None: ...


class LibBackend:
    """libnftables on one worker thread that lives in ``netns`` (empty: this process's namespace)."""

    name: BackendName = "lib"

    def __init__(self, netns: str = "") -> None:
        lib = libnft.load_library()
        if lib is None:
            raise LibNftError(2, libnft.library_error() or "libnftables not found")
        self._lib = lib
        self._netns = netns
        self._executor: ThreadPoolExecutor | None = None
        # Touched only on the worker thread:
        self._ctx: LibNftContext | None = None
        self._ns_inode = 0

    def _netns_inode(self) -> int:
        try:
            return os.stat(os.path.join(libnft.NETNS_DIR, self._netns)).st_ino
        except OSError as exc:
            raise LibNftError(
                exc.errno, f"Cannot open network namespace {self._netns}: {exc.strerror}"
            ) from exc

    def _context(self) -> LibNftContext:
        # Runs on the worker thread.  A namespace deleted and made again under the same name is a
        # new namespace: the thread follows the name, as `ip netns exec` would.
        if self._netns:
            inode = self._netns_inode()
            if self._ctx is not None and inode != self._ns_inode:
                log.info("nft: network namespace %s was replaced; reopening", self._netns)
                self._ctx.close()
                self._ctx = None
            if self._ctx is None:
                libnft.enter_netns(self._netns)
                self._ns_inode = inode
        if self._ctx is None:
            self._ctx = LibNftContext(self._lib)
        return self._ctx

    def _run_sync(self, text: str, json_output: bool, numeric: bool) -> RunResult:
        return self._context().run(text, json_output=json_output, numeric=numeric)

    def _close_sync(self) -> None:
        if self._ctx is not None:
            self._ctx.close()
            self._ctx = None

    async def _call(self, fn: Callable[[], T]) -> T:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(
                max_workers=1, thread_name_prefix=f"nft-{self._netns or 'own'}"
            )
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn)

    async def run(self, text: str, *, json_output: bool, numeric: bool) -> RunResult:
        return await self._call(functools.partial(self._run_sync, text, json_output, numeric))

    def _read_counters_sync(self, table: str) -> dict[str, tuple[int, int]]:
        self._context()  # in the namespace before the socket opens
        return nlcounters.read_counters(table)

    async def read_counters(self, table: str) -> dict[str, tuple[int, int]] | None:
        return await self._call(functools.partial(self._read_counters_sync, table))

    async def close(self) -> None:
        """Free the context and end the thread (it holds the namespace while it lives)."""
        executor, self._executor = self._executor, None
        if executor is None:
            return
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(executor, self._close_sync)
        await loop.run_in_executor(None, executor.shutdown)


class ProcessBackend:
    """``ip netns exec <netns> nft -f -`` per call (``nft`` alone for this process's namespace)."""

    name: BackendName = "process"

    def __init__(self, netns: str = "", *, binary: str = "nft") -> None:
        self._prefix = ["ip", "netns", "exec", netns] if netns else []
        self._binary = binary

    async def run(self, text: str, *, json_output: bool, numeric: bool) -> RunResult:
        # The nft 1.0.6 binary differs from the library here: with -j it silently ignores a native
        # script read from a file (exit 0), and prints nothing for a list command read from one.  So
        # -j only for JSON input or listing, and list commands go on argv.
        listing = "\n" not in text and text.startswith("list ")
        is_json = text.lstrip().startswith("{")
        flags = (["-j"] if is_json or (listing and json_output) else []) + (["-n"] if numeric else [])
        source = text.split() if listing else ["-f", "-"]
        try:
            proc = await asyncio.create_subprocess_exec(
                *self._prefix,
                self._binary,
                *flags,
                *source,
                stdin=asyncio.subprocess.DEVNULL if listing else asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
        except OSError as exc:
            raise RetryableTargetError("UNAVAILABLE", f"cannot run nft: {exc}") from exc
        out, err = await proc.communicate(None if listing else text.encode())
        return RunResult(proc.returncode or 0, out.decode(errors="replace"), err.decode(errors="replace"))

    async def read_counters(self, table: str) -> dict[str, tuple[int, int]] | None:
        return None

    async def close(self) -> None:
        return None


def choose_backend(netns: str = "", prefer: BackendName | None = None) -> Backend:
    """libnftables when it loads (unless ``prefer="process"``), else the ``nft`` process."""
    where = netns or "(own namespace)"
    if prefer != "process":
        try:
            backend: Backend = LibBackend(netns)
        except LibNftError as exc:
            if prefer == "lib":
                raise RetryableTargetError("UNAVAILABLE", f"libnftables unavailable: {exc}") from exc
            log.warning(
                "nft %s: libnftables unavailable (%s); running the nft binary per transaction", where, exc
            )
        else:
            log.info("nft %s: libnftables in-process (one worker thread in the namespace)", where)
            return backend
    log.info("nft %s: nft process per transaction", where)
    return ProcessBackend(netns)


class Nft:
    """xpunet's nftables table in namespace ``netns`` (empty: the caller's own namespace)."""

    def __init__(self, netns: str = "", *, backend: Backend | None = None) -> None:
        self.netns = netns
        self.backend = backend if backend is not None else choose_backend(netns)

    async def close(self) -> None:
        await self.backend.close()

    async def _run(
        self, what: str, text: str, *, json_output: bool = True, numeric: bool = False
    ) -> RunResult:
        try:
            result = await self.backend.run(text, json_output=json_output, numeric=numeric)
        except LibNftError as exc:
            raise RetryableTargetError("UNAVAILABLE", f"nft {what}: {exc}") from exc
        if result.rc != 0:
            raise self._error(what, result)
        return result

    def _error(self, what: str, result: RunResult) -> TargetError:
        msg = f"nft {what} failed (exit {result.rc}): {result.err.strip()[:2000]}"
        transient = any(t in result.err for t in _TRANSIENT)
        # The nft binary exits 1 for a failed command; other codes are the environment (no memory,
        # no netlink, `ip netns exec` failing).  libnftables returns -1 for every failure.
        if self.backend.name == "process" and result.rc != 1:
            transient = True
        if transient:
            return RetryableTargetError("UNAVAILABLE", msg)
        return PermanentTargetError("INVALID_ARGUMENT", msg)

    async def apply_text(self, text: str) -> None:
        """Run an already encoded transaction (JSON document or native script)."""
        if text:
            await self._run("transaction", text)

    async def run_script(self, script: str) -> None:
        """Run an nft script (native syntax) as one transaction."""
        if script:
            await self._run("script", script)

    async def list_table(self) -> dict[str, Any] | None:
        """``nft -j -n list table inet xpunet``; None when the table does not exist."""
        try:
            result = await self._run("list table", f"list table {FAMILY} {TABLE}", numeric=True)
        except TargetError as exc:
            if _missing(exc):
                return None
            raise
        doc: dict[str, Any] = json.loads(result.out)
        return doc

    async def list_map(self, name: str) -> dict[str, Any]:
        """``nft -j -n list map inet xpunet <name>`` (with learned elements, their timeouts)."""
        result = await self._run("list map", f"list map {FAMILY} {TABLE} {name}", numeric=True)
        doc: dict[str, Any] = json.loads(result.out)
        return doc

    async def list_counters(self) -> dict[str, tuple[int, int]]:
        """name → (packets, bytes) of the table's named counters."""
        try:
            direct = await self.backend.read_counters(TABLE)
        except OSError as exc:  # LibNftError (namespace) or the dump's netlink error
            raise RetryableTargetError("UNAVAILABLE", f"nft counters: {exc}") from exc
        if direct is not None:
            return direct
        result = await self._run("list counters", f"list counters table {FAMILY} {TABLE}")
        counters: dict[str, tuple[int, int]] = {}
        for obj in json.loads(result.out).get("nftables", ()):
            c = obj.get("counter")
            if c is not None:
                counters[c["name"]] = (int(c.get("packets", 0)), int(c.get("bytes", 0)))
        return counters

    async def delete_table(self) -> None:
        """Remove xpunet's table (teardown only; never part of reconciliation)."""
        try:
            await self._run("delete table", f"delete table {FAMILY} {TABLE}", json_output=False)
        except TargetError as exc:
            if not _missing(exc):
                raise
