"""A local Kubernetes API server speaking the real list/watch HTTP protocol, for tests and benchmarks.

It is not a mock of a client library: the real ``kubernetes_asyncio`` client
talks to it over HTTP through a kubeconfig (``FakeKubeAPI.write_kubeconfig``).
What it implements, faithfully enough for an informer and a leader elector:

* one global ``resourceVersion`` counter (like etcd's revision) stamped on every
  write, returned by lists and carried by every watch event;
* paginated lists (``limit`` / ``continue``) served from a consistent snapshot,
  items without ``kind``/``apiVersion`` as the real server returns them;
* watches as chunked JSON streams (one event per line) from a resourceVersion:
  events after it are replayed from history, older than the compacted history
  is an ``ERROR`` event carrying a 410 ``Status`` (what the real server does);
  ``allowWatchBookmarks`` and ``timeoutSeconds`` are honoured;
* test controls: ``apply``/``delete`` objects, ``compact`` the history,
  ``drop_watches`` (abort the TCP connections mid-stream), ``send_bookmarks``;
* create/get/replace/delete of single objects with optimistic concurrency
  (409 ``Conflict`` on a stale ``metadata.resourceVersion``), which is what
  Lease-based leader election needs;
* optionally, what an in-cluster client meets: HTTPS (``ssl_context``) and
  bearer-token authentication (``tokens``: a request without one of them gets
  the API server's 401 ``Unauthorized`` Status; tests may swap the set to
  model a token rotation).  Both are off by default.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import copy
import itertools
import json
import logging
import ssl
import uuid
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from xpunet.bus.api import InSync, StateStore

log = logging.getLogger(__name__)

JSON = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Resource:
    prefix: str  # "/api/v1" or "/apis/<group>/<version>"
    plural: str
    kind: str
    namespaced: bool

    @property
    def api_version(self) -> str:
        return "v1" if self.prefix == "/api/v1" else self.prefix.removeprefix("/apis/")


RESOURCES: tuple[Resource, ...] = (
    Resource("/api/v1", "pods", "Pod", True),
    Resource("/api/v1", "namespaces", "Namespace", False),
    Resource("/api/v1", "nodes", "Node", False),
    Resource("/api/v1", "services", "Service", True),
    Resource("/apis/discovery.k8s.io/v1", "endpointslices", "EndpointSlice", True),
    Resource("/apis/networking.k8s.io/v1", "networkpolicies", "NetworkPolicy", True),
    Resource("/apis/coordination.k8s.io/v1", "leases", "Lease", True),
)
_BY_KIND = {r.kind: r for r in RESOURCES}
_BY_PATH = {(r.prefix, r.plural): r for r in RESOURCES}

_DROP = object()  # queue sentinel: abort the connection without a clean end of stream
_END = object()  # queue sentinel: end the stream cleanly


def status(code: int, reason: str, message: str) -> JSON:
    """A metav1.Status object as the API server returns it for errors."""
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }


@dataclass(slots=True, eq=False)
class _Watch:
    resource: Resource
    namespace: str | None
    queue: asyncio.Queue[object] = field(default_factory=asyncio.Queue)


@dataclass(slots=True)
class _Table:
    resource: Resource
    objects: dict[tuple[str, str], JSON] = field(default_factory=dict)
    # Each object as a list item (JSON without kind/apiVersion), encoded once per write, so
    # serving a 150,000-pod list costs the bench little CPU beside the watcher under test.
    items: dict[tuple[str, str], bytes] = field(default_factory=dict)
    # (resourceVersion, event type, object) of every write after `floor`.
    history: deque[tuple[int, str, JSON]] = field(default_factory=deque)
    floor: int = 0  # watches from a resourceVersion below this get 410 Gone


class FakeKubeAPI:
    """The list/watch/CRUD part of a Kubernetes API server, on 127.0.0.1 (port 0 by default)."""

    def __init__(
        self,
        *,
        history_limit: int = 100_000,
        page_snapshots: int = 16,
        ssl_context: ssl.SSLContext | None = None,
        tokens: Iterable[str] | None = None,
    ) -> None:
        self._rv = 0
        self._tables = {r.kind: _Table(r) for r in RESOURCES}
        self._watches: set[_Watch] = set()
        self._history_limit = history_limit
        self._snapshots: dict[str, tuple[int, list[bytes]]] = {}
        self._page_snapshots = page_snapshots
        self._runner: web.AppRunner | None = None
        self._port = 0
        self.requests: list[tuple[str, str]] = []  # (method, path?query) of every request, for assertions
        self.fail_next: deque[int] = deque()  # HTTP status codes to answer the next requests with
        # Answer a watch from a compacted resourceVersion with HTTP 410 instead of an ERROR event
        # (older API servers and some proxies do).
        self.gone_as_http_status = False
        self._ssl = ssl_context
        # Bearer tokens the server accepts; None: no authentication (any or no token passes).
        self.tokens: set[str] | None = set(tokens) if tokens is not None else None
        self.token_uses: Counter[str] = Counter()  # accepted requests per token
        self.unauthorized = 0  # requests answered 401
        self._written = asyncio.Event()  # set by every write; ``until`` waits on it

    # --- lifecycle -------------------------------------------------------------------------------

    async def start(self, port: int = 0) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", port, ssl_context=self._ssl)
        await site.start()
        server = site._server  # aiohttp exposes the bound port only through the asyncio server
        assert isinstance(server, asyncio.Server)
        self._port = server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        for w in list(self._watches):
            w.queue.put_nowait(_END)
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> FakeKubeAPI:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def url(self) -> str:
        return f"{'https' if self._ssl else 'http'}://127.0.0.1:{self._port}"

    @property
    def port(self) -> int:
        return self._port

    def write_kubeconfig(self, path: Path, *, ca_file: Path | None = None) -> Path:
        """A kubeconfig pointing at this server, with one of its tokens (or one nobody checks).

        With HTTPS, ``ca_file`` is the CA (PEM) that signed the server's certificate.
        """
        if self._ssl is not None and ca_file is None:
            raise ValueError("write_kubeconfig: an HTTPS server needs ca_file")
        cluster: JSON = {"server": self.url}
        if ca_file is not None:
            cluster["certificate-authority"] = str(ca_file)
        token = min(self.tokens) if self.tokens else "fake-token"
        doc = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "fake", "cluster": cluster}],
            "users": [{"name": "fake", "user": {"token": token}}],
            "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake"}}],
            "current-context": "fake",
        }
        path.write_text(json.dumps(doc))  # JSON is YAML
        return path

    # --- state, driven by tests ------------------------------------------------------------------

    @property
    def resource_version(self) -> int:
        return self._rv

    def get(self, kind: str, namespace: str | None, name: str) -> JSON | None:
        obj = self._tables[kind].objects.get((namespace or "", name))
        return copy.deepcopy(obj) if obj is not None else None

    def objects(self, kind: str) -> list[JSON]:
        return [copy.deepcopy(o) for o in self._tables[kind].objects.values()]

    def apply(self, obj: JSON) -> JSON:
        """Create or replace an object (no concurrency check); emits ADDED or MODIFIED.  Returns it."""
        kind = obj.get("kind")
        if kind not in _BY_KIND:
            raise ValueError(f"unsupported kind {kind!r}")
        return self._write(_BY_KIND[kind], copy.deepcopy(obj), check_rv=False)

    def apply_many(self, objs: Iterable[JSON]) -> None:
        for obj in objs:
            self.apply(obj)

    def delete(self, kind: str, namespace: str | None, name: str) -> JSON | None:
        """Delete an object; emits DELETED with the object at a new resourceVersion."""
        table = self._tables[kind]
        obj = table.objects.pop((namespace or "", name), None)
        table.items.pop((namespace or "", name), None)
        if obj is None:
            return None
        self._rv += 1
        obj = dict(obj)
        obj["metadata"] = {**obj["metadata"], "resourceVersion": str(self._rv)}
        self._record(table, "DELETED", obj)
        return obj

    def compact(self) -> None:
        """Forget all history: a watch or a continued list from an older resourceVersion gets 410."""
        for table in self._tables.values():
            table.history.clear()
            table.floor = self._rv
        self._snapshots.clear()

    def drop_watches(self) -> None:
        """Abort every open watch connection mid-stream (no end-of-stream chunk)."""
        for w in self._watches:
            w.queue.put_nowait(_DROP)

    def end_watches(self) -> None:
        """End every open watch stream cleanly, as the server does when timeoutSeconds expires."""
        for w in self._watches:
            w.queue.put_nowait(_END)

    def send_bookmarks(self) -> None:
        """A BOOKMARK at the current resourceVersion on every watch that asked for bookmarks."""
        for w in self._watches:
            w.queue.put_nowait(("BOOKMARK", self._bookmark(w.resource)))

    @property
    def open_watches(self) -> int:
        return len(self._watches)

    async def until(self, predicate: Callable[[], bool], *, within: float = 30.0) -> None:
        """Wait until ``predicate()`` holds, re-checking after every write (TimeoutError after ``within``)."""
        async with asyncio.timeout(within):
            while not predicate():
                self._written.clear()  # no await since the check: no write can slip between
                await self._written.wait()

    # --- internals -------------------------------------------------------------------------------

    def _write(self, res: Resource, obj: JSON, *, check_rv: bool) -> JSON:
        meta = obj.setdefault("metadata", {})
        name = meta.get("name")
        if not isinstance(name, str) or not name:
            raise _HTTPError(422, "Invalid", "metadata.name: Required value")
        ns = meta.get("namespace", "") if res.namespaced else ""
        if res.namespaced and not ns:
            raise _HTTPError(422, "Invalid", "metadata.namespace: Required value")
        table = self._tables[res.kind]
        old = table.objects.get((ns, name))
        if check_rv:
            want = meta.get("resourceVersion")
            if old is None and want:
                raise _HTTPError(404, "NotFound", f'{res.plural} "{name}" not found')
            if old is not None and want and want != old["metadata"]["resourceVersion"]:
                raise _HTTPError(
                    409,
                    "Conflict",
                    f'Operation cannot be fulfilled on {res.plural} "{name}": the object has been '
                    "modified; please apply your changes to the latest version and try again",
                )
        self._rv += 1
        obj["kind"] = res.kind
        obj["apiVersion"] = res.api_version
        meta["resourceVersion"] = str(self._rv)
        meta.setdefault("uid", old["metadata"]["uid"] if old else str(uuid.uuid4()))
        meta.setdefault("creationTimestamp", "2026-01-01T00:00:00Z")
        table.objects[(ns, name)] = obj
        table.items[(ns, name)] = _dumps({k: v for k, v in obj.items() if k not in ("kind", "apiVersion")})
        self._record(table, "MODIFIED" if old is not None else "ADDED", obj)
        return obj

    def _record(self, table: _Table, kind: str, obj: JSON) -> None:
        self._written.set()
        table.history.append((self._rv, kind, obj))
        while len(table.history) > self._history_limit:
            rv, _, _ = table.history.popleft()
            table.floor = rv
        ns = obj["metadata"].get("namespace")
        for w in self._watches:
            if w.resource is table.resource and (w.namespace is None or w.namespace == ns):
                w.queue.put_nowait((kind, obj))

    def _bookmark(self, res: Resource) -> JSON:
        return {
            "kind": res.kind,
            "apiVersion": res.api_version,
            "metadata": {"resourceVersion": str(self._rv)},
        }

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.requests.append((request.method, request.path_qs))
        try:
            self._authenticate(request)
            if self.fail_next:
                code = self.fail_next.popleft()
                raise _HTTPError(code, "InternalError", f"injected failure {code}")
            res, namespace, name = _route(request.path)
            if request.method == "GET" and name is None:
                if _flag(request.query.get("watch")):
                    return await self._serve_watch(request, res, namespace)
                return web.Response(
                    body=self._list(res, namespace, request.query), content_type="application/json"
                )
            if request.method == "GET" and name is not None:
                obj = self._tables[res.kind].objects.get((namespace or "", name))
                if obj is None:
                    raise _HTTPError(404, "NotFound", f'{res.plural} "{name}" not found')
                return web.json_response(obj)
            if request.method in ("POST", "PUT"):
                body = await request.json()
                if not isinstance(body, dict):
                    raise _HTTPError(400, "BadRequest", "body is not an object")
                meta = body.setdefault("metadata", {})
                if res.namespaced:
                    meta["namespace"] = namespace
                if request.method == "POST":
                    key = (namespace or "", meta.get("name", ""))
                    if key in self._tables[res.kind].objects:
                        raise _HTTPError(409, "AlreadyExists", f'{res.plural} "{key[1]}" already exists')
                    meta.pop("resourceVersion", None)
                    return web.json_response(self._write(res, body, check_rv=False), status=201)
                if meta.get("name") != name:
                    raise _HTTPError(400, "BadRequest", "the name of the object does not match the URL")
                return web.json_response(self._write(res, body, check_rv=True))
            if request.method == "DELETE" and name is not None:
                obj = self.delete(res.kind, namespace, name)
                if obj is None:
                    raise _HTTPError(404, "NotFound", f'{res.plural} "{name}" not found')
                return web.json_response(obj)
            raise _HTTPError(405, "MethodNotAllowed", f"{request.method} not supported here")
        except _HTTPError as err:
            return web.json_response(status(err.code, err.reason, err.message), status=err.code)

    def _authenticate(self, request: web.Request) -> None:
        if self.tokens is None:
            return
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or token not in self.tokens:
            self.unauthorized += 1
            # What kube-apiserver answers for a missing, unknown or expired token.
            raise _HTTPError(401, "Unauthorized", "Unauthorized")
        self.token_uses[token] += 1

    def _list(self, res: Resource, namespace: str | None, query: Any) -> bytes:
        limit = int(query.get("limit", "0") or 0)
        token = query.get("continue")
        if token:
            try:
                state = json.loads(base64.urlsafe_b64decode(token))
                snap_id, start = str(state["id"]), int(state["start"])
            except (ValueError, KeyError, TypeError) as exc:
                raise _HTTPError(400, "BadRequest", f"invalid continue token: {exc}") from exc
            if snap_id not in self._snapshots:
                raise _HTTPError(
                    410, "Expired", "The provided continue parameter is too old to display a consistent list"
                )
            rv, items = self._snapshots[snap_id]
        else:
            rv = self._rv
            table = self._tables[res.kind].items
            items = [table[k] for k in sorted(table) if namespace is None or k[0] == namespace]
            snap_id, start = uuid.uuid4().hex, 0
        end = len(items) if limit <= 0 else min(len(items), start + limit)
        meta: JSON = {"resourceVersion": str(rv)}
        if end < len(items):
            self._snapshots[snap_id] = (rv, items)
            while len(self._snapshots) > self._page_snapshots:
                del self._snapshots[next(iter(self._snapshots))]
            meta["continue"] = base64.urlsafe_b64encode(
                json.dumps({"id": snap_id, "start": end}).encode()
            ).decode()
            meta["remainingItemCount"] = len(items) - end
        else:
            self._snapshots.pop(snap_id, None)
        # The real server omits kind/apiVersion on list items (``_Table.items``).
        head = _dumps({"kind": f"{res.kind}List", "apiVersion": res.api_version, "metadata": meta})
        return head[:-1] + b',"items":[' + b",".join(items[start:end]) + b"]}"

    async def _serve_watch(
        self, request: web.Request, res: Resource, namespace: str | None
    ) -> web.StreamResponse:
        bookmarks = _flag(request.query.get("allowWatchBookmarks"))
        timeout = float(request.query.get("timeoutSeconds", "0") or 0) or None
        rv_text = request.query.get("resourceVersion", "")
        watch = _Watch(res, namespace)
        table = self._tables[res.kind]
        # Register before building the backlog: no await happens in between, so no write is missed.
        if rv_text in ("", "0"):
            backlog: list[object] = [("ADDED", o) for o in table.objects.values()]
        else:
            try:
                since = int(rv_text)
            except ValueError:
                raise _HTTPError(400, "BadRequest", f"invalid resourceVersion {rv_text!r}") from None
            if since < table.floor:
                msg = f"too old resource version: {since} ({table.floor})"
                if self.gone_as_http_status:
                    raise _HTTPError(410, "Gone", msg)
                backlog = [("ERROR", status(410, "Expired", msg)), _END]
            else:
                backlog = [
                    (t, o)
                    for rv, t, o in table.history
                    if rv > since and (namespace is None or o["metadata"].get("namespace") == namespace)
                ]
        for item in backlog:
            watch.queue.put_nowait(item)
        self._watches.add(watch)
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout if timeout else None
        try:
            while True:
                wait = None if deadline is None else max(0.0, deadline - loop.time())
                try:
                    item = await asyncio.wait_for(watch.queue.get(), wait)
                except TimeoutError:
                    if bookmarks:
                        await resp.write(_line("BOOKMARK", self._bookmark(res)))
                    break
                if item is _DROP:
                    if request.transport is not None:
                        request.transport.abort()
                    return resp
                if item is _END:
                    break
                assert isinstance(item, tuple)
                etype, obj = item
                if etype == "BOOKMARK" and not bookmarks:
                    continue
                await resp.write(_line(etype, obj))
            await resp.write_eof()
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            self._watches.discard(watch)
        return resp


def _dumps(obj: JSON) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def _flag(value: str | None) -> bool:
    # Go's strconv.ParseBool, which the API server uses for query flags.
    return value in ("1", "t", "T", "true", "TRUE", "True")


def _line(etype: str, obj: JSON) -> bytes:
    return json.dumps({"type": etype, "object": obj}, separators=(",", ":")).encode() + b"\n"


class _HTTPError(Exception):
    def __init__(self, code: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.code, self.reason, self.message = code, reason, message


def _route(path: str) -> tuple[Resource, str | None, str | None]:
    """(resource, namespace, name) of a request path, or a 404."""
    parts = [p for p in path.split("/") if p]
    if parts[:2] == ["api", "v1"]:
        prefix, rest = "/api/v1", parts[2:]
    elif len(parts) >= 3 and parts[0] == "apis":
        prefix, rest = f"/apis/{parts[1]}/{parts[2]}", parts[3:]
    else:
        raise _HTTPError(404, "NotFound", f"no route {path}")
    namespace: str | None = None
    if len(rest) >= 3 and rest[0] == "namespaces":
        namespace, rest = rest[1], rest[2:]
    if not rest or (prefix, rest[0]) not in _BY_PATH or len(rest) > 2:
        raise _HTTPError(404, "NotFound", f"no route {path}")
    return _BY_PATH[(prefix, rest[0])], namespace, rest[1] if len(rest) == 2 else None


# --- synthetic objects, shared by tests and the benchmark ------------------------------------------


def pod(
    namespace: str, name: str, *, ip: str, node: str = "node-0", labels: dict[str, str] | None = None
) -> JSON:
    return {
        "kind": "Pod",
        "apiVersion": "v1",
        "metadata": {"namespace": namespace, "name": name, "labels": labels or {"app": name}},
        "spec": {
            "nodeName": node,
            "containers": [{"name": "c", "image": "x", "ports": [{"containerPort": 8080, "name": "http"}]}],
        },
        "status": {
            "phase": "Running",
            "podIP": ip,
            "podIPs": [{"ip": ip}],
            "conditions": [{"type": "Ready", "status": "True"}],
        },
    }


def namespace_obj(name: str, labels: dict[str, str] | None = None) -> JSON:
    return {
        "kind": "Namespace",
        "apiVersion": "v1",
        "metadata": {"name": name, "labels": {"kubernetes.io/metadata.name": name, **(labels or {})}},
    }


def node(name: str, *, ip: str, pod_cidr: str) -> JSON:
    return {
        "kind": "Node",
        "apiVersion": "v1",
        "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
        "spec": {"podCIDR": pod_cidr, "podCIDRs": [pod_cidr]},
        "status": {
            "addresses": [{"type": "InternalIP", "address": ip}, {"type": "Hostname", "address": name}]
        },
    }


def service(namespace: str, name: str, *, cluster_ip: str, port: int = 80) -> JSON:
    return {
        "kind": "Service",
        "apiVersion": "v1",
        "metadata": {"namespace": namespace, "name": name},
        "spec": {
            "type": "ClusterIP",
            "clusterIP": cluster_ip,
            "clusterIPs": [cluster_ip],
            "selector": {"app": name},
            "ports": [{"name": "http", "port": port, "protocol": "TCP", "targetPort": 8080}],
        },
    }


def endpoint_slice(
    namespace: str, name: str, *, service_name: str, ips: Iterable[str], node_name: str = "node-0"
) -> JSON:
    return {
        "kind": "EndpointSlice",
        "apiVersion": "discovery.k8s.io/v1",
        "metadata": {
            "namespace": namespace,
            "name": name,
            "labels": {"kubernetes.io/service-name": service_name},
        },
        "addressType": "IPv4",
        "endpoints": [
            {"addresses": [ip], "conditions": {"ready": True}, "nodeName": node_name} for ip in ips
        ],
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
    }


def network_policy(namespace: str, name: str, *, app: str, port: int = 8080) -> JSON:
    return {
        "kind": "NetworkPolicy",
        "apiVersion": "networking.k8s.io/v1",
        "metadata": {"namespace": namespace, "name": name},
        "spec": {
            "podSelector": {"matchLabels": {"app": app}},
            "policyTypes": ["Ingress"],
            "ingress": [
                {
                    "from": [{"namespaceSelector": {}, "podSelector": {"matchLabels": {"role": "client"}}}],
                    "ports": [{"protocol": "TCP", "port": port}],
                }
            ],
        },
    }


def ipv4(n: int, base: int = 10 << 24) -> str:
    """The n-th address after ``base`` (default 10.0.0.0), as a dotted quad."""
    v = base + n
    return f"{v >> 24 & 255}.{v >> 16 & 255}.{v >> 8 & 255}.{v & 255}"


def synthetic_cluster(
    *, nodes: int, pods: int, services: int, endpoints: int, policies: int, namespaces: int = 50
) -> Iterator[JSON]:
    """A cluster of the given size: pods spread over nodes and namespaces, one slice per service."""
    ns_names = [f"ns-{i}" for i in range(namespaces)]
    yield from (namespace_obj(n) for n in ns_names)
    for i in range(nodes):
        yield node(
            f"node-{i}", ip=ipv4(i, 172 << 24 | 16 << 16), pod_cidr=f"10.{64 + i // 256}.{i % 256}.0/24"
        )
    for i in range(pods):
        yield pod(ns_names[i % namespaces], f"pod-{i}", ip=ipv4(i), node=f"node-{i % max(nodes, 1)}")
    per_service = endpoints // max(services, 1)
    counter = itertools.count()
    for i in range(services):
        ns = ns_names[i % namespaces]
        yield service(ns, f"svc-{i}", cluster_ip=ipv4(i, 100 << 24 | 64 << 16))
        ips = [ipv4(next(counter) % max(pods, 1)) for _ in range(per_service)]
        yield endpoint_slice(ns, f"svc-{i}-abcde", service_name=f"svc-{i}", ips=ips)
    for i in range(policies):
        yield network_policy(ns_names[i % namespaces], f"policy-{i}", app=f"svc-{i % max(services, 1)}")


# --- following the mirror in KV, for tests that wait for the watcher ------------------------------


class KVFollower:
    """Follows a KV bucket (``StateStore.watch``) into a dict, so tests can wait for a condition on it."""

    def __init__(self, store: StateStore) -> None:
        self._store = store
        self.values: dict[str, bytes] = {}
        self.revisions: dict[str, int] = {}
        self.puts: dict[str, int] = {}  # how many times each key was written (after the snapshot)
        self._changed = asyncio.Condition()
        self._in_sync = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> KVFollower:
        """Returns once the bucket's current contents are read (later writes count as ``puts``)."""
        self._task = asyncio.create_task(self._follow())
        async with asyncio.timeout(30):
            await self._in_sync.wait()
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _follow(self) -> None:
        live = False
        async for item in self._store.watch(""):
            if isinstance(item, InSync):
                live = True
                self._in_sync.set()
                continue
            if item.value is None:
                self.values.pop(item.key, None)
            else:
                self.values[item.key] = item.value
                if live:
                    self.puts[item.key] = self.puts.get(item.key, 0) + 1
            self.revisions[item.key] = item.revision
            async with self._changed:
                self._changed.notify_all()

    async def until(self, predicate: Callable[[dict[str, bytes]], bool], *, within: float = 30.0) -> None:
        """Wait until ``predicate(values)`` holds (TimeoutError after ``within`` seconds)."""
        try:
            async with asyncio.timeout(within), self._changed:
                await self._changed.wait_for(lambda: predicate(self.values))
        except TimeoutError:
            raise TimeoutError(
                f"KV condition not met within {within}s; keys now: {sorted(self.values)}"
            ) from None

    def keys(self, prefix: str) -> set[str]:
        return {k for k in self.values if k.startswith(prefix)}
