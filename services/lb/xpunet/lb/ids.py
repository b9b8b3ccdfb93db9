"""Service-port ids: small stable numbers the datapath uses as table keys.  Pure.

An id is preferred from a hash of the service port's key suffix
(``<ns>.<svc>.<proto>-<port>.<family>``) so that it is the same after any
restart even without state; a collision (rare: 2**24 ids) takes the next free
number.  Ids are persisted in the intents themselves: the lb service seeds this
allocator from the ``LbServicePort`` values already in KV before compiling, so
an allocated id never moves while its service port exists.
"""

from __future__ import annotations

import hashlib

from xpunet.ir.lb import SERVICE_ID_BITS

_SPACE = (1 << SERVICE_ID_BITS) - 1  # ids 1 .. 2**24 - 1; 0 means "no service"


class IdSpaceExhaustedError(RuntimeError):
    pass


def preferred_id(suffix: str) -> int:
    digest = hashlib.blake2b(suffix.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % _SPACE + 1


class ServicePortIds:
    def __init__(self) -> None:
        self._by_suffix: dict[str, int] = {}
        self._used: set[int] = set()

    def __len__(self) -> int:
        return len(self._by_suffix)

    def seed(self, suffix: str, ident: int) -> bool:
        """Adopt an id found in KV; False (ignored) if it is out of range or already taken."""
        if not 1 <= ident <= _SPACE or ident in self._used or suffix in self._by_suffix:
            return False
        self._by_suffix[suffix] = ident
        self._used.add(ident)
        return True

    def get(self, suffix: str) -> int:
        """The id of ``suffix``, allocating one if needed."""
        ident = self._by_suffix.get(suffix)
        if ident is not None:
            return ident
        if len(self._used) >= _SPACE:
            raise IdSpaceExhaustedError(f"no free service-port id for {suffix}")
        ident = preferred_id(suffix)
        while ident in self._used:
            ident = ident % _SPACE + 1
        self._by_suffix[suffix] = ident
        self._used.add(ident)
        return ident

    def release(self, suffix: str) -> None:
        ident = self._by_suffix.pop(suffix, None)
        if ident is not None:
            self._used.discard(ident)
