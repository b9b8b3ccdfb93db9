"""The nft adapter: runs Debian's ``nft`` (JSON mode) inside a network namespace.  I/O.

Each call is one ``nft`` process, so each :meth:`Nft.apply` is one atomic
nftables transaction.  The venv's Python cannot import Debian's
python3-nftables bindings, hence the subprocess.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Sequence
from typing import Any

from xpunet.datapath.kernel.ruleset import FAMILY, TABLE
from xpunet.p4rt.errors import PermanentTargetError, RetryableTargetError, TargetError

log = logging.getLogger(__name__)


class Nft:
    """``nft`` in namespace ``netns`` (empty: the caller's own namespace)."""

    def __init__(self, netns: str = "", *, binary: str = "nft") -> None:
        self._prefix = ["ip", "netns", "exec", netns] if netns else []
        self._binary = binary

    async def _run(self, args: Sequence[str], stdin: str | None = None) -> tuple[int, str, str]:
        try:
            proc = await asyncio.create_subprocess_exec(
                *self._prefix,
                self._binary,
                *args,
                stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
        except OSError as exc:
            raise RetryableTargetError("UNAVAILABLE", f"cannot run nft: {exc}") from exc
        out, err = await proc.communicate(stdin.encode() if stdin is not None else None)
        return proc.returncode or 0, out.decode(), err.decode()

    def _error(self, what: str, rc: int, err: str) -> TargetError:
        msg = f"nft {what} failed (exit {rc}): {err.strip()[:2000]}"
        # nft exits 1 for a rejected ruleset (the request is wrong); other codes are the environment.
        if rc == 1:
            return PermanentTargetError("INVALID_ARGUMENT", msg)
        return RetryableTargetError("UNAVAILABLE", msg)

    async def apply(self, commands: list[dict[str, Any]]) -> None:
        """Run ``commands`` as one transaction (nothing applies if any fails)."""
        if not commands:
            return
        rc, _, err = await self._run(["-j", "-f", "-"], json.dumps({"nftables": commands}))
        if rc != 0:
            raise self._error("transaction", rc, err)

    async def run_script(self, script: str) -> None:
        """Run an nft script (native syntax) as one transaction."""
        rc, _, err = await self._run(["-f", "-"], script)
        if rc != 0:
            raise self._error("script", rc, err)

    async def list_table(self) -> dict[str, Any] | None:
        """``nft -j -n list table inet xpunet``; None when the table does not exist."""
        rc, out, err = await self._run(["-j", "-n", "list", "table", FAMILY, TABLE])
        if rc != 0:
            if "No such file or directory" in err:
                return None
            raise self._error("list table", rc, err)
        doc: dict[str, Any] = json.loads(out)
        return doc

    async def list_counters(self) -> dict[str, tuple[int, int]]:
        rc, out, err = await self._run(["-j", "list", "counters", "table", FAMILY, TABLE])
        if rc != 0:
            raise self._error("list counters", rc, err)
        counters: dict[str, tuple[int, int]] = {}
        for obj in json.loads(out).get("nftables", ()):
            c = obj.get("counter")
            if c is not None:
                counters[c["name"]] = (int(c.get("packets", 0)), int(c.get("bytes", 0)))
        return counters

    async def delete_table(self) -> None:
        """Remove xpunet's table (teardown only; never part of reconciliation)."""
        rc, _, err = await self._run(["delete", "table", FAMILY, TABLE])
        if rc != 0 and "No such file or directory" not in err:
            raise self._error("delete table", rc, err)
