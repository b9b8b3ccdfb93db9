"""A stand-in for ``xpunet.bus.nats`` until it lands: connect, KV get/put/delete, drain.

Only what the runtime itself needs (health records).  To be deleted once the
real bus adapter exists; nothing outside ``xpunet.runtime`` should import it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import nats
from nats.js.errors import BucketNotFoundError, KeyNotFoundError

log = logging.getLogger(__name__)


class ShimKV:
    def __init__(self, bucket: str, kv: Any) -> None:
        self._bucket = bucket
        self._kv = kv

    @property
    def bucket(self) -> str:
        return self._bucket

    async def get(self, key: str) -> bytes | None:
        try:
            entry = await self._kv.get(key)
        except KeyNotFoundError:
            return None
        value: bytes | None = entry.value
        return value

    async def put(self, key: str, value: bytes) -> int:
        revision: int = await self._kv.put(key, value)
        return revision

    async def delete(self, key: str) -> None:
        await self._kv.delete(key)

    async def items(self, prefix: str) -> dict[str, bytes]:
        out: dict[str, bytes] = {}
        try:
            keys = await self._kv.keys()
        except Exception as exc:  # nats-py raises NoKeysError (a NotFoundError) for an empty bucket
            if type(exc).__name__ == "NoKeysError":
                return out
            raise
        for key in keys:
            if key.startswith(prefix):
                value = await self.get(key)
                if value is not None:
                    out[key] = value
        return out


class _State:
    closing = False  # set before drain so the disconnect that follows is not reported as a fault


class ShimBus:
    def __init__(self, nc: Any, state: _State) -> None:
        self._nc = nc
        self._js = nc.jetstream()
        self._state = state

    @property
    def is_connected(self) -> bool:
        return bool(self._nc.is_connected)

    async def kv(self, bucket: str) -> ShimKV:
        try:
            kv = await self._js.key_value(bucket)
        except BucketNotFoundError:
            kv = await self._js.create_key_value(bucket=bucket, history=1)
        return ShimKV(bucket, kv)

    async def drain(self) -> None:
        self._state.closing = True
        if not self._nc.is_closed:
            await self._nc.drain()

    async def close(self) -> None:
        self._state.closing = True
        if not self._nc.is_closed:
            await self._nc.close()


async def connect(
    servers: Sequence[str], *, name: str, connect_timeout: float, reconnect_wait: float
) -> ShimBus:
    state = _State()

    async def on_error(exc: Exception) -> None:
        log.warning("nats %s: %s", name, exc or type(exc).__name__)

    async def on_disconnect() -> None:
        if state.closing:
            return
        log.warning("nats %s: disconnected", name)

    async def on_reconnect() -> None:
        log.info("nats %s: reconnected", name)

    nc = await nats.connect(
        servers=list(servers),
        name=name,
        connect_timeout=connect_timeout,
        reconnect_time_wait=reconnect_wait,
        max_reconnect_attempts=-1,  # also keeps retrying the first connection until cancelled
        allow_reconnect=True,
        error_cb=on_error,
        disconnected_cb=on_disconnect,
        reconnected_cb=on_reconnect,
    )
    return ShimBus(nc, state)
