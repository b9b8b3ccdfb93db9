"""A small ctypes binding of libnftables (Debian's ``libnftables.so.1``) and network-namespace entry.  I/O.

Only what the kernel target needs: a context (``nft_ctx_new``), its output
flags (JSON, numeric), buffered output and error text, and
``nft_run_cmd_from_buffer``.  With the JSON output flag set, libnftables
parses a buffer as JSON when it is JSON and as nft's native syntax otherwise
(nft 1.0.6), so one context serves both.

A context's netlink socket belongs to the network namespace of the thread
that opens it, and every command of the context talks through that socket;
:func:`enter_netns` moves the *calling thread* (not the process) into a named
namespace (``setns(CLONE_NEWNET)`` on ``/run/netns/<name>``) before the
context is made.  Python 3.11 has no ``os.setns``, hence libc through ctypes.

Nothing here is thread-safe: one :class:`LibNftContext` is used by one thread.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import logging
import os
import threading
from dataclasses import dataclass
from typing import Final

log = logging.getLogger(__name__)

LIBRARY: Final = "libnftables.so.1"
NETNS_DIR: Final = "/run/netns"
CLONE_NEWNET: Final = 0x40000000

# enum nft_output_flags (libnftables(3))
OUTPUT_JSON: Final = 1 << 4
OUTPUT_NUMERIC_PROTO: Final = 1 << 7
OUTPUT_NUMERIC_PRIO: Final = 1 << 8
OUTPUT_NUMERIC_SYMBOL: Final = 1 << 9
OUTPUT_NUMERIC_TIME: Final = 1 << 10
OUTPUT_NUMERIC_ALL: Final = (
    OUTPUT_NUMERIC_PROTO | OUTPUT_NUMERIC_PRIO | OUTPUT_NUMERIC_SYMBOL | OUTPUT_NUMERIC_TIME
)
"""What ``nft -n`` sets."""

_lib: ctypes.CDLL | None = None
# libnftables 1.0.6 is not safe to run from two threads at once, even with one context each
# (two node namespaces in one process aborted inside nft_run_cmd_from_buffer): one at a time.
_run_lock = threading.Lock()
_lib_error: str | None = None


class LibNftError(OSError):
    """libnftables cannot be loaded, a context cannot be made, or the namespace cannot be entered."""


def _declare(lib: ctypes.CDLL) -> None:
    ctx = ctypes.c_void_p
    lib.nft_ctx_new.argtypes = [ctypes.c_uint32]
    lib.nft_ctx_new.restype = ctx
    lib.nft_ctx_free.argtypes = [ctx]
    lib.nft_ctx_free.restype = None
    lib.nft_ctx_output_set_flags.argtypes = [ctx, ctypes.c_uint]
    lib.nft_ctx_output_set_flags.restype = None
    for name in ("nft_ctx_buffer_output", "nft_ctx_buffer_error"):
        getattr(lib, name).argtypes = [ctx]
        getattr(lib, name).restype = ctypes.c_int
    for name in ("nft_ctx_get_output_buffer", "nft_ctx_get_error_buffer"):
        # c_char_p copies the text into Python bytes at once: the library reuses the buffer.
        getattr(lib, name).argtypes = [ctx]
        getattr(lib, name).restype = ctypes.c_char_p
    lib.nft_run_cmd_from_buffer.argtypes = [ctx, ctypes.c_char_p]
    lib.nft_run_cmd_from_buffer.restype = ctypes.c_int


def load_library() -> ctypes.CDLL | None:
    """libnftables, or None when it is not installed (the reason is in :func:`library_error`)."""
    global _lib, _lib_error
    if _lib is not None or _lib_error is not None:
        return _lib
    try:
        path = ctypes.util.find_library("nftables") or LIBRARY
        lib = ctypes.CDLL(path, use_errno=True)
        _declare(lib)
    except (OSError, AttributeError) as exc:  # AttributeError: a library without these symbols
        _lib_error = f"{LIBRARY}: {exc}"
        return None
    _lib = lib
    return lib


def library_error() -> str | None:
    """Why :func:`load_library` returned None (None while it has not failed)."""
    return _lib_error


_libc: ctypes.CDLL | None = None


def _setns(fd: int, nstype: int) -> None:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        _libc.setns.argtypes = [ctypes.c_int, ctypes.c_int]
        _libc.setns.restype = ctypes.c_int
    if _libc.setns(fd, nstype) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def enter_netns(name: str) -> None:
    """Move the calling thread into network namespace ``name`` (``/run/netns/<name>``)."""
    if not name or "/" in name or name in (".", ".."):
        raise LibNftError(errno.EINVAL, f"bad network namespace name {name!r}")
    path = os.path.join(NETNS_DIR, name)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise LibNftError(exc.errno, f"cannot open network namespace {path}: {exc.strerror}") from exc
    try:
        _setns(fd, CLONE_NEWNET)
    except OSError as exc:
        raise LibNftError(exc.errno, f"cannot enter network namespace {name}: {exc.strerror}") from exc
    finally:
        os.close(fd)


@dataclass(frozen=True, slots=True)
class RunResult:
    rc: int  # 0: success; nft_run_cmd_from_buffer returns -1 on any failure
    out: str
    err: str


class LibNftContext:
    """One ``struct nft_ctx`` with buffered output and error text.  Use it from one thread only."""

    def __init__(self, lib: ctypes.CDLL) -> None:
        self._lib = lib
        with _run_lock:
            ctx = lib.nft_ctx_new(0)  # NFT_CTX_DEFAULT
        if not ctx:
            raise LibNftError(errno.ENOMEM, "nft_ctx_new failed")
        self._ctx: int | None = ctx
        if lib.nft_ctx_buffer_output(ctx) != 0 or lib.nft_ctx_buffer_error(ctx) != 0:
            lib.nft_ctx_free(ctx)
            self._ctx = None
            raise LibNftError(errno.ENOMEM, "nft_ctx_buffer_output/error failed")

    def run(self, text: str | bytes, *, json_output: bool = True, numeric: bool = False) -> RunResult:
        """Run one buffer (JSON or native commands: one transaction for the kernel)."""
        ctx = self._ctx
        if ctx is None:
            raise LibNftError(errno.EBADF, "nftables context is closed")
        flags = (OUTPUT_JSON if json_output else 0) | (OUTPUT_NUMERIC_ALL if numeric else 0)
        self._lib.nft_ctx_output_set_flags(ctx, flags)
        data = text.encode() if isinstance(text, str) else text
        with _run_lock:
            rc = self._lib.nft_run_cmd_from_buffer(ctx, data)
            # Read both buffers every time: unread text would be prepended to the next command's.
            out = self._lib.nft_ctx_get_output_buffer(ctx) or b""
            err = self._lib.nft_ctx_get_error_buffer(ctx) or b""
        return RunResult(int(rc), out.decode(errors="replace"), err.decode(errors="replace"))

    def close(self) -> None:
        if self._ctx is not None:
            with _run_lock:
                self._lib.nft_ctx_free(self._ctx)
            self._ctx = None
