"""The datapath's picture of its inputs: decoded intents, Node objects, sync state.  Pure.

Fed one KV entry at a time by the service's watches:

* ``xpunet-intent`` under ``node.<token>.`` and ``global.`` — policy, lb and
  route intents, decoded with ``xpunet.wire`` (bad values are reported by key
  and ignored, the previous value of that key is dropped: fail closed);
* ``xpunet-k8s`` ``node.*`` — Node objects, to derive routes while no routing
  service publishes ``global.routes.node.*`` (the same rule as ``xpunetctl
  trace``), and ``sync.node`` — the watcher's marker that its Node list is in KV.

It also remembers, per change, where the change started (the producer's
timestamp header if any, else when it arrived) and its trace context headers,
until an apply pass acknowledges it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from xpunet.ir.keys import node_prefix
from xpunet.ir.lb import ConntrackTimeouts, LbNodeAddresses, LbNodeOverride, LbServicePort
from xpunet.ir.policy import IPSet, PolicyEndpoint
from xpunet.ir.routes import NextHopKind, NodeRoute, RouteError, node_route_key, routes_from_nodes
from xpunet.model.objects import Node
from xpunet.pipeline.lowering import NodeIntents, node_intents_from_kv
from xpunet.wire import WireError, decode_k8s, decode_object

INTENT_CLASSES = (
    PolicyEndpoint,
    IPSet,
    LbServicePort,
    LbNodeOverride,
    LbNodeAddresses,
    ConntrackTimeouts,
    NodeRoute,
)
# A producer may stamp its KV writes with this header (unix seconds) so the
# datapath measures convergence from the write, not from its own receipt.
WRITTEN_AT_HEADER = "xpunet-written-at"
SYNC_NODE_KEY = "sync.node"


@dataclass(frozen=True, slots=True)
class Change:
    """One intent change waiting for the target's acknowledgement."""

    key: str
    revision: int
    started: float  # unix seconds
    headers: Mapping[str, str] = field(default_factory=dict)


def started_at(headers: Mapping[str, str], received: float) -> float:
    raw = headers.get(WRITTEN_AT_HEADER)
    if raw is None:
        return received
    try:
        value = float(raw)
    except ValueError:
        return received
    return value if 0 < value <= received + 60 else received


@dataclass(slots=True)
class IntentView:
    node: str
    routes_from_nodes: bool = True
    next_hop: NextHopKind = "direct"
    vni: int = 4096
    values: dict[str, object] = field(default_factory=dict)
    nodes: dict[str, Node] = field(default_factory=dict)
    problems: dict[str, str] = field(default_factory=dict)  # key → why its value was not used
    node_list_synced: bool = False  # the watcher's sync.node marker is present
    revision: int = 0  # highest xpunet-intent revision seen
    route_intents: int = 0  # NodeRoute values held (routes come from Nodes only while there are none)

    @property
    def prefixes(self) -> tuple[str, str]:
        return (node_prefix(self.node), "global.")

    def apply_intent(self, key: str, value: bytes | None, revision: int) -> bool:
        """Take one xpunet-intent entry; returns whether the desired state may have changed."""
        self.revision = max(self.revision, revision)
        if value is None:
            self.problems.pop(key, None)
            return self._put(key, None) is not None
        try:
            obj = decode_object(value)
        except WireError as exc:
            self.problems[key] = str(exc)
            return self._put(key, None) is not None
        if not isinstance(obj, INTENT_CLASSES):
            self.problems[key] = f"{type(obj).__name__} is not an intent the datapath lowers"
            return self._put(key, None) is not None
        self.problems.pop(key, None)
        if self.values.get(key) == obj:
            return False
        self._put(key, obj)
        return True

    def _put(self, key: str, obj: object | None) -> object | None:
        """Set or drop one value, keeping the count of route intents; returns the previous value."""
        old = self.values.pop(key, None) if obj is None else self.values.get(key)
        if obj is not None:
            self.values[key] = obj
        self.route_intents += isinstance(obj, NodeRoute) - isinstance(old, NodeRoute)
        return old

    def apply_k8s(self, key: str, value: bytes | None) -> bool:
        """Take one xpunet-k8s entry (``node.*`` or ``sync.node``); returns whether routes may change."""
        if key == SYNC_NODE_KEY:
            self.node_list_synced = value is not None
            return False
        if not key.startswith("node."):
            return False
        name = key.removeprefix("node.")
        if value is None:
            self.problems.pop(f"xpunet-k8s {key}", None)
            return self.nodes.pop(name, None) is not None
        try:
            obj = decode_k8s(value)
        except WireError as exc:
            self.problems[f"xpunet-k8s {key}"] = str(exc)
            return False
        if not isinstance(obj, Node):
            return False
        self.problems.pop(f"xpunet-k8s {key}", None)
        if self.nodes.get(obj.name) == obj:
            return False
        self.nodes[obj.name] = obj
        return self.uses_node_routes()

    def uses_node_routes(self) -> bool:
        return self.routes_from_nodes and not self.route_intents

    def derived_routes(self) -> dict[str, NodeRoute]:
        """Routes derived from Node objects (key → route), while no routing service publishes any."""
        out: dict[str, NodeRoute] = {}
        if not self.uses_node_routes():
            return out
        for name, node in self.nodes.items():
            try:
                (route,) = routes_from_nodes([node], next_hop=self.next_hop, vni=self.vni)
            except RouteError as exc:
                self.problems[f"xpunet-k8s node.{name}"] = str(exc)
                continue
            out[node_route_key(route.node)] = route
        return out

    def node_intents(self) -> NodeIntents:
        values: dict[str, object] = self.values
        derived = self.derived_routes()
        if derived:
            values = dict(values) | derived
        return node_intents_from_kv(self.node, values)

    def local_pod_cidrs(self) -> tuple[str, ...]:
        node = self.nodes.get(self.node)
        return node.pod_cidrs if node is not None else ()
