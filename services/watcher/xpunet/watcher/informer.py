"""List/watch of one kind against the Kubernetes API (kubernetes_asyncio), with informer semantics.

Per kind, forever: a paginated list (``limit``/``continue``) feeds every object
to the feed and, at its end, deletes the keys the list no longer contains and
queues the kind's in-sync marker; then a watch from the list's
resourceVersion with bookmarks.  A watch that ends (server timeout) or drops
(connection lost) resumes from the last resourceVersion seen, so nothing is
lost or repeated; a 410 Gone (an ``ERROR`` event carrying a Status, or an HTTP
410) means that resourceVersion is compacted away: relist.  Other errors back
off exponentially with jitter.

The generated API calls are used with ``_preload_content=False``: the raw JSON
is all we need, and skipping the client's model deserialisation is most of the
cost of a 150,000-pod list.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import aiohttp
from kubernetes_asyncio import client

from xpunet.bus.backoff import Backoff
from xpunet.model import Kind
from xpunet.watcher._aio import raise_if_cancelling
from xpunet.watcher.feed import Feed
from xpunet.watcher.state import ListPage, decode_list_page

log = logging.getLogger(__name__)

# (API class, method listing/watching the kind across all namespaces).
LIST_CALLS: Final[Mapping[Kind, tuple[type[Any], str]]] = {
    Kind.POD: (client.CoreV1Api, "list_pod_for_all_namespaces"),
    Kind.NAMESPACE: (client.CoreV1Api, "list_namespace"),
    Kind.NODE: (client.CoreV1Api, "list_node"),
    Kind.SERVICE: (client.CoreV1Api, "list_service_for_all_namespaces"),
    Kind.ENDPOINT_SLICE: (client.DiscoveryV1Api, "list_endpoint_slice_for_all_namespaces"),
    Kind.NETWORK_POLICY: (client.NetworkingV1Api, "list_network_policy_for_all_namespaces"),
}


@dataclass(frozen=True, slots=True)
class InformerOptions:
    page_size: int = 500
    watch_timeout: float = 300.0  # server-side timeoutSeconds; jittered by up to +50 % per watch
    request_timeout: float = 60.0  # client-side, for list pages and watch reads beyond watch_timeout
    backoff: Backoff = field(default_factory=lambda: Backoff(initial=0.2, factor=2.0, maximum=30.0))


PageDecoder = Callable[[Kind, bytes], Awaitable[ListPage]]


async def _decode_here(kind: Kind, body: bytes) -> ListPage:
    return decode_list_page(kind, body)


class GoneError(Exception):
    """The resourceVersion we hold is too old (410): the only way on is a relist."""


class ApiError(Exception):
    """The API server answered a list or watch with an error status."""

    def __init__(self, status: int, body: bytes) -> None:
        self.status = status
        try:
            message = json.loads(body).get("message", "")
        except (ValueError, AttributeError):
            message = body[:200].decode(errors="replace")
        super().__init__(f"HTTP {status}: {message}")


# Errors that end one list or watch attempt; anything else is a bug and propagates.
RETRYABLE: Final = (ApiError, aiohttp.ClientError, asyncio.TimeoutError, ValueError, KeyError, TypeError)


class Informer:
    """Keeps one kind of the feed in step with the API server."""

    def __init__(
        self,
        api: client.ApiClient,
        kind: Kind,
        feed: Feed,
        *,
        options: InformerOptions | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        decode: PageDecoder | None = None,
    ) -> None:
        cls, method = LIST_CALLS[kind]
        self._call: Callable[..., Awaitable[aiohttp.ClientResponse]] = getattr(cls(api), method)
        self.kind = kind
        self._feed = feed
        self._opt = options or InformerOptions()
        self._sleep = sleep
        self._decode = decode or _decode_here
        self.resource_version: str | None = None  # the last one seen; None: must (re)list
        self.lists = 0  # completed lists, for tests and logs

    async def run(self) -> None:
        attempt = 0
        while True:
            try:
                if self.resource_version is None:
                    await self._list()
                    attempt = 0
                await self._watch()
                attempt = 0  # a watch that ended cleanly: resume at once
            except GoneError as exc:
                log.info("%s: %s; relisting", self.kind, exc)
                self.resource_version = None
                self._feed.metrics.relist(self.kind, "gone")
            except RETRYABLE as exc:
                raise_if_cancelling()
                attempt += 1
                delay = self._opt.backoff.delay(attempt)
                log.warning(
                    "%s: list/watch failed (%s: %s); retry %d in %.2fs from resourceVersion %s",
                    self.kind,
                    type(exc).__name__,
                    exc,
                    attempt,
                    delay,
                    self.resource_version or "(relist)",
                )
                self._feed.metrics.watch_restart(self.kind, type(exc).__name__)
                await self._sleep(delay)

    async def _list(self) -> None:
        token: str | None = None
        self._feed.begin_relist(self.kind)
        while True:
            kwargs: dict[str, Any] = {"limit": self._opt.page_size}
            if token:
                kwargs["_continue"] = token
            resp = await self._call(
                **kwargs, _preload_content=False, _request_timeout=self._opt.request_timeout
            )
            async with resp:
                body = await resp.read()
                if resp.status == 410:
                    raise GoneError("continue token expired during the list")
                if resp.status != 200:
                    raise ApiError(resp.status, body)
            page = await self._decode(self.kind, body)
            self._feed.apply_many(self.kind, page.items)
            token = page.continue_token
            if token is None:
                rv = page.resource_version
                self._feed.end_relist(self.kind, resource_version=rv)
                self.resource_version = rv
                self.lists += 1
                return

    async def _watch(self) -> None:
        timeout = int(self._opt.watch_timeout * (1 + random.random() / 2))
        resp = await self._call(
            watch=True,
            resource_version=self.resource_version,
            allow_watch_bookmarks=True,
            timeout_seconds=timeout,
            _preload_content=False,
            _request_timeout=(self._opt.request_timeout, timeout + self._opt.request_timeout),
        )
        async with resp:
            if resp.status == 410:
                raise GoneError("watch: HTTP 410")
            if resp.status != 200:
                raise ApiError(resp.status, await resp.read())
            async for event in _lines(resp):
                self._apply(json.loads(event))

    def _apply(self, event: Mapping[str, Any]) -> None:
        etype, obj = event["type"], event["object"]
        if etype == "ERROR":
            code = obj.get("code") if isinstance(obj, Mapping) else None
            if code == 410:
                raise GoneError(f"watch: {obj.get('reason')}: {obj.get('message')}")
            raise ApiError(int(code or 500), json.dumps(obj).encode())
        rv = obj["metadata"]["resourceVersion"]
        if etype in ("ADDED", "MODIFIED"):
            self._feed.upsert(self.kind, obj)
        elif etype == "DELETED":
            self._feed.delete(self.kind, obj)
        elif etype != "BOOKMARK":
            log.warning("%s: ignoring watch event of unknown type %r", self.kind, etype)
        self.resource_version = str(rv)


async def _lines(resp: aiohttp.ClientResponse) -> AsyncIterator[bytes]:
    """Newline-delimited events of a chunked watch stream, of any length.

    (``StreamReader.readline`` caps a line at its buffer limit; a big
    EndpointSlice or a pod with long managedFields exceeds it.)
    """
    buf = bytearray()
    async for chunk in resp.content.iter_any():
        buf += chunk
        start = 0
        while (end := buf.find(b"\n", start)) >= 0:
            line = bytes(buf[start:end])
            start = end + 1
            if line.strip():
                yield line
        del buf[:start]
    if buf.strip():
        yield bytes(buf)
