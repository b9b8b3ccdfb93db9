"""Load-balancing intents: what the lb compiler publishes and the datapath lowers.

One :class:`LbServicePort` per Service port and IP family, under a global key,
plus node-specific overrides only where a traffic policy or topology makes the
backend set depend on the node.  Keys in the ``xpunet-intent`` bucket:

* ``global.lb.svc.<ns>.<svc>.<proto>-<port>.<family>`` → :class:`LbServicePort`
  (``<proto>`` lowercase ``tcp``/``udp``/``sctp``, ``<family>`` ``ipv4``/``ipv6``;
  (port, protocol) is unique within a Service, so the key is too).
* ``node.<node>.lb.svc.<ns>.<svc>.<proto>-<port>.<family>`` → :class:`LbNodeOverride`,
  present only on nodes whose backend set differs from the global default.
* ``node.<node>.lb.addresses`` → :class:`LbNodeAddresses`, the node's own
  addresses on which NodePort frontends listen.
* ``global.lb.conntrack`` → :class:`ConntrackTimeouts`.
* Rejected input is reported in ``xpunet-status`` under ``lb.rejected.<ns>.<svc>``.

Semantics the datapath must implement:

* **Frontends.**  A packet to ``(frontend ip, protocol, frontend port)`` belongs
  to the service port ``id``.  A ``node_port`` frontend has ``ip=None``: it
  matches each address of the node the datapath serves (``LbNodeAddresses`` of
  the family), on ``port`` (the nodePort), so NodePorts cost one entry per
  service port, not one per service port times node address.
* **Backend sets.**  ``cluster_ip`` frontends use the *internal* set, every
  other frontend kind (``Frontend.external``) the *external* set.  On node N:
  internal = ``override.internal`` if node N has an override with it set, else
  ``internal``; external = ``override.external`` if set, else ``external`` if
  not None, else the internal set N uses (``external is None`` means "same as
  internal", which saves a second table when both policies are Cluster).
* **Selection.**  A new flow picks ``set.backends[set.table[h % len(set.table)]]``
  with ``h`` a hash of the flow's 5-tuple, or of the client (source) IP alone
  when ``affinity`` is set.  Every node holds the same table for the same set,
  so every node (and xPU) picks the same backend for a flow.  Established flows
  stay on their backend through connection tracking.
* **Empty set.**  ``table == ()``: ``when_empty == "reject"`` → answer TCP with
  RST and other protocols with ICMP(v6) port unreachable (the Service has no
  usable endpoint at all); ``"drop"`` → drop silently (a Local traffic policy
  and no local endpoint: kube-proxy drops those).
* **NAT.**  DNAT to the backend ``ip:port``; replies are reverse-NATed to the
  frontend.  ``external_snat`` True (externalTrafficPolicy Cluster): traffic via
  external frontends is also SNATed to the node's address so replies return
  through this node.  False (Local): the client source is kept.  Traffic via
  ``cluster_ip`` frontends is not SNATed (hairpin — a pod reaching itself —
  is the datapath's concern).  With externalTrafficPolicy Local, kube-proxy
  sends traffic that local *pods* send to external frontends through the
  internal set; datapaths should do the same.
* **Affinity.**  ``affinity`` set (sessionAffinity ClientIP): a client IP stays
  on the backend it got for ``timeout_s`` seconds after its last packet.
* **Connection tracking.**  Timeouts per protocol/state from ``global.lb.conntrack``.

Service-port ids: ``id`` is a number in ``[1, 2**24)`` usable as a table key.
The lb service prefers a hash of the key (so ids rarely move) and probes the
next free id on a collision; ids live in the intents themselves and the
service reads them back on start, so an id is stable across restarts and every
node sees the same one (nodes never derive ids).

Compatibility: fields are only added (with defaults); ``SCHEMA_VERSION`` is
bumped on additions; decoders ignore unknown fields.  Changes are noted in
docs/intents.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from xpunet.ir.keys import node_prefix as _node_prefix
from xpunet.model.objects import Protocol

SCHEMA_VERSION = 1

LB_SERVICE_SCHEMA = "lb.svc"
LB_NODE_OVERRIDE_SCHEMA = "lb.node_svc"
LB_NODE_ADDRESSES_SCHEMA = "lb.node_addresses"
LB_CONNTRACK_SCHEMA = "lb.conntrack"
LB_REJECTION_SCHEMA = "lb.rejected"

SERVICE_ID_BITS = 24
"""Service-port ids fit this many bits (id 0 is never used)."""

GLOBAL_SERVICE_PREFIX = "global.lb.svc."
CONNTRACK_KEY = "global.lb.conntrack"

Family = Literal["ipv4", "ipv6"]
FAMILIES: tuple[Family, ...] = ("ipv4", "ipv6")

FrontendKind = Literal["cluster_ip", "node_port", "external_ip", "load_balancer"]
EmptyAction = Literal["reject", "drop"]


def service_port_suffix(namespace: str, service: str, protocol: Protocol, port: int, family: Family) -> str:
    """``<ns>.<svc>.<proto>-<port>.<family>``: the part of a key naming one service port and family."""
    return f"{namespace}.{service}.{protocol.lower()}-{port}.{family}"


def service_key(namespace: str, service: str, protocol: Protocol, port: int, family: Family) -> str:
    return GLOBAL_SERVICE_PREFIX + service_port_suffix(namespace, service, protocol, port, family)


def node_prefix(node: str) -> str:
    """The prefix of every lb key of one node."""
    return _node_prefix(node) + "lb."


def node_override_key(
    node: str, namespace: str, service: str, protocol: Protocol, port: int, family: Family
) -> str:
    return _node_prefix(node) + "lb.svc." + service_port_suffix(namespace, service, protocol, port, family)


def node_addresses_key(node: str) -> str:
    return _node_prefix(node) + "lb.addresses"


def rejected_status_key(namespace: str, service: str) -> str:
    """Key in ``xpunet-status`` reporting why (parts of) a Service were skipped."""
    return f"lb.rejected.{namespace}.{service}"


@dataclass(frozen=True, slots=True)
class Frontend:
    """An address the service port answers on.

    ``ip`` is a canonical address string (``ipaddress`` compressed form); it is
    None only for ``node_port``: every address of the serving node.
    """

    kind: FrontendKind
    ip: str | None
    port: int

    @property
    def external(self) -> bool:
        """External frontends use the external backend set (externalTrafficPolicy)."""
        return self.kind != "cluster_ip"


@dataclass(frozen=True, slots=True)
class Backend:
    """One endpoint address and its resolved target port.

    ``identity`` (ip and port) seeds the Maglev permutation, so a backend keeps
    its preferred buckets whatever else changes.  ``weight`` ≥ 1 scales its
    share of the table.
    """

    ip: str
    port: int
    node: str | None = None
    zone: str | None = None
    weight: int = 1

    @property
    def identity(self) -> str:
        return f"{self.ip},{self.port}"


@dataclass(frozen=True, slots=True)
class BackendSet:
    """Backends (sorted by ip, then port) and their Maglev lookup table.

    ``table[b]`` is an index into ``backends`` for bucket ``b``; its length is a
    prime ≥ 100 * len(backends) (at least 251, at most 131071), or 0 when there
    are no backends, in which case ``when_empty`` says what to do.
    """

    backends: tuple[Backend, ...] = ()
    table: tuple[int, ...] = ()
    when_empty: EmptyAction = "reject"

    @property
    def empty(self) -> bool:
        return not self.backends


@dataclass(frozen=True, slots=True)
class Affinity:
    """sessionAffinity ClientIP: a client stays on its backend ``timeout_s`` seconds after its last packet."""

    timeout_s: int


@dataclass(frozen=True, slots=True)
class LbServicePort:
    """The global intent of one Service port in one IP family."""

    id: int
    namespace: str
    service: str
    family: Family
    protocol: Protocol
    port: int  # the Service port (the cluster_ip/external_ip/load_balancer frontends' port)
    port_name: str | None = None
    frontends: tuple[Frontend, ...] = ()  # sorted by (kind, ip, port)
    internal: BackendSet = BackendSet()  # default for every node without an override
    external: BackendSet | None = None  # None: same as the node's internal set
    external_snat: bool = True  # externalTrafficPolicy Cluster
    affinity: Affinity | None = None
    # True when some nodes may hold a LbNodeOverride for this port (a Local traffic
    # policy or topology hints are in effect); purely informational.
    node_specific: bool = False


@dataclass(frozen=True, slots=True)
class LbNodeOverride:
    """Node-specific backend sets of one service port; None: use the global intent's."""

    id: int
    internal: BackendSet | None = None
    external: BackendSet | None = None


@dataclass(frozen=True, slots=True)
class LbNodeAddresses:
    """The node's own addresses (InternalIP and ExternalIP, both families, sorted): NodePort listens here."""

    node: str
    addresses: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class ConntrackTimeouts:
    """Connection-tracking timeouts in seconds, per protocol and state.

    Defaults follow kube-proxy (TCP established 24 h, close-wait 1 h) and the
    Linux conntrack defaults elsewhere.
    """

    tcp_syn_sent: int = 120
    tcp_syn_recv: int = 60
    tcp_established: int = 86400
    tcp_fin_wait: int = 120
    tcp_close_wait: int = 3600
    tcp_last_ack: int = 30
    tcp_time_wait: int = 120
    tcp_close: int = 10
    udp: int = 30  # one direction seen
    udp_stream: int = 120  # both directions seen
    sctp_established: int = 210
    sctp_other: int = 30  # handshake and shutdown states
    icmp: int = 30


LbIntent = LbServicePort | LbNodeOverride | LbNodeAddresses | ConntrackTimeouts


@dataclass(frozen=True, slots=True)
class LbRejection:
    """``xpunet-status`` value at ``lb.rejected.<ns>.<svc>``: input that was skipped, and why.

    Each problem names the object and field (``EndpointSlice web-abc: endpoints[3]:
    unparsable address '10.0.0.300'``).  The rest of the Service still compiles.
    """

    namespace: str
    service: str
    problems: tuple[str, ...] = ()


def _register_schemas() -> None:
    # Registered here so anyone importing the schema can decode_object() lb values.
    from xpunet.wire import register

    register(LB_SERVICE_SCHEMA, LbServicePort)
    register(LB_NODE_OVERRIDE_SCHEMA, LbNodeOverride)
    register(LB_NODE_ADDRESSES_SCHEMA, LbNodeAddresses)
    register(LB_CONNTRACK_SCHEMA, ConntrackTimeouts)
    register(LB_REJECTION_SCHEMA, LbRejection)


_register_schemas()
