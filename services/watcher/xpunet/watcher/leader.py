"""Leader election over a coordination.k8s.io/v1 Lease, through kubernetes_asyncio.

The algorithm is client-go's: a candidate reads the Lease; if another identity
holds it, the candidate waits until it has seen the same record unchanged for
``leaseDurationSeconds`` by its own clock (no clock comparison across
machines), then takes it with a replace carrying the read resourceVersion, so
two candidates racing for it cannot both win (the API answers 409 to the
loser).  The leader renews every ``retry_period``.

Writes stop at once on loss: ``is_leader()`` is true only until
``renew_deadline`` (shorter than the lease duration) after the start of the
last successful renewal, so a leader cut off from the API stops writing
before any standby may take over, even if its renew loop is starved.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import aiohttp
from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

from xpunet.watcher._aio import raise_if_cancelling
from xpunet.watcher.writer import LeadershipLostError

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class LeaseOptions:
    identity: str
    namespace: str = "xpunet-system"
    name: str = "xpunet-watcher"
    lease_duration: int = 15  # seconds (the Lease field is an integer)
    renew_deadline: float = 10.0  # the leader stops writing this long after its last good renewal began
    retry_period: float = 2.0

    def __post_init__(self) -> None:
        if not 0 < self.retry_period < self.renew_deadline < self.lease_duration:
            raise ValueError(
                f"lease timings must satisfy 0 < retry_period ({self.retry_period}) < renew_deadline "
                f"({self.renew_deadline}) < lease_duration ({self.lease_duration})"
            )


_ERRORS = (ApiException, aiohttp.ClientError, asyncio.TimeoutError, ValueError)


class LeaderElector:
    def __init__(
        self,
        api: client.ApiClient,
        options: LeaseOptions,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._api = client.CoordinationV1Api(api)
        self.options = options
        self._clock = clock
        self._sleep = sleep
        self._valid_until = float("-inf")
        self._observed: tuple[object, ...] | None = None
        self._observed_at = 0.0
        self.holder: str | None = None  # the last holder seen, for logs and status

    def is_leader(self) -> bool:
        return self._clock() < self._valid_until

    async def acquire(self) -> None:
        """Return once this candidate holds the lease."""
        o = self.options
        log.info("%s: waiting for lease %s/%s", o.identity, o.namespace, o.name)
        while not await self._try_acquire_or_renew():
            await self._sleep(o.retry_period)
        log.info("%s: acquired lease %s/%s", o.identity, o.namespace, o.name)

    async def hold(self) -> None:
        """Renew until the lease is lost; then raise ``LeadershipLostError`` (never returns normally)."""
        o = self.options
        while True:
            await self._sleep(o.retry_period)
            await self._try_acquire_or_renew()
            if not self.is_leader():
                log.warning(
                    "%s: lost lease %s/%s (holder now %s)", o.identity, o.namespace, o.name, self.holder
                )
                raise LeadershipLostError(f"lease {o.namespace}/{o.name} lost to {self.holder or 'nobody'}")

    async def release(self) -> None:
        """Give the lease up (a clean stop), so a standby need not wait for it to expire.

        Done only if the Lease still names us; the replace carries the resourceVersion
        we read, so a candidate that took it meanwhile is never overwritten.
        """
        self._valid_until = float("-inf")
        o = self.options
        try:
            lease = await self._api.read_namespaced_lease(o.name, o.namespace)
            if lease.spec is None or lease.spec.holder_identity != o.identity:
                return
            lease.spec.holder_identity = ""
            lease.spec.lease_duration_seconds = 1
            lease.spec.renew_time = _now()
            await self._api.replace_namespaced_lease(o.name, o.namespace, lease)
            log.info("%s: released lease %s/%s", o.identity, o.namespace, o.name)
        except _ERRORS as exc:
            log.warning("%s: could not release lease %s/%s: %s", o.identity, o.namespace, o.name, exc)

    async def _try_acquire_or_renew(self) -> bool:
        o = self.options
        start = self._clock()
        try:
            won = await self._attempt(start)
        except _ERRORS as exc:
            raise_if_cancelling()
            log.warning("%s: lease %s/%s: %s", o.identity, o.namespace, o.name, _describe(exc))
            return False
        if won:
            # Counted from before the request: the API may have applied it at any point since.
            self._valid_until = start + o.renew_deadline
        return won

    async def _attempt(self, start: float) -> bool:
        o = self.options
        try:
            lease = await self._api.read_namespaced_lease(o.name, o.namespace)
        except ApiException as exc:
            if exc.status != 404:
                raise
            body = client.V1Lease(
                metadata=client.V1ObjectMeta(name=o.name, namespace=o.namespace),
                spec=self._spec(None),
            )
            try:
                await self._api.create_namespaced_lease(o.namespace, body)
            except ApiException as exc2:
                if exc2.status == 409:  # another candidate created it first
                    return False
                raise
            self.holder = o.identity
            return True
        spec = lease.spec or client.V1LeaseSpec()
        self.holder = spec.holder_identity
        record = (
            spec.holder_identity,
            spec.renew_time,
            spec.lease_duration_seconds,
            lease.metadata.resource_version,
        )
        if record != self._observed:
            self._observed, self._observed_at = record, start
        held_by_other = bool(spec.holder_identity) and spec.holder_identity != o.identity
        duration = spec.lease_duration_seconds or o.lease_duration
        if held_by_other and start < self._observed_at + duration:
            return False
        lease.spec = self._spec(spec)
        try:
            await self._api.replace_namespaced_lease(o.name, o.namespace, lease)
        except ApiException as exc:
            if exc.status == 409:  # someone wrote it since we read it: they win this round
                return False
            raise
        if held_by_other or not spec.holder_identity:
            log.info(
                "%s: took over lease %s/%s from %s", o.identity, o.namespace, o.name, spec.holder_identity
            )
        self.holder = o.identity
        return True

    def _spec(self, old: client.V1LeaseSpec | None) -> client.V1LeaseSpec:
        o = self.options
        now = _now()
        mine = old is not None and old.holder_identity == o.identity
        transitions = (old.lease_transitions or 0) if old is not None else 0
        return client.V1LeaseSpec(
            holder_identity=o.identity,
            lease_duration_seconds=o.lease_duration,
            acquire_time=old.acquire_time if mine and old is not None else now,
            renew_time=now,
            lease_transitions=transitions if mine or old is None else transitions + 1,
        )


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ApiException):
        return f"HTTP {exc.status} {exc.reason}"
    return f"{type(exc).__name__}: {exc}"
