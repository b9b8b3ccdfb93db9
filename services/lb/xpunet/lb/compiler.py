"""The lb compiler: Services, EndpointSlices and Nodes in, load-balancing intents out.  Pure.

:func:`compile_service` turns one Service (with its slices and the known
Nodes) into its intents; :class:`LbCompiler` keeps the objects, recompiles only
the Services an update touches, and returns only the intents that changed
(``None`` for a delete).  Semantics of the output: ``xpunet.ir.lb``; endpoint
selection rules: ``xpunet.lb.endpoints``.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace

from xpunet.ir.lb import (
    FAMILIES,
    Affinity,
    Backend,
    BackendSet,
    EmptyAction,
    Family,
    Frontend,
    FrontendKind,
    LbIntent,
    LbNodeAddresses,
    LbNodeOverride,
    LbServicePort,
    node_addresses_key,
    node_override_key,
    service_key,
    service_port_suffix,
)
from xpunet.lb.endpoints import (
    Candidate,
    ParsedSlice,
    candidates,
    cluster_backends,
    has_hints,
    ipv4_canonical,
    local_backends,
)
from xpunet.lb.maglev import build_table
from xpunet.model.objects import PROTOCOLS, Node, Service, ServicePort

logger = logging.getLogger(__name__)

NODE_PORT_TYPES = ("NodePort", "LoadBalancer")
NODE_ADDRESS_TYPES = ("InternalIP", "ExternalIP")

Identities = tuple[str, ...]  # the backend identities a Maglev table is built from, in set order
TableCache = dict[Identities, tuple[int, ...]]


@dataclass(slots=True)
class ServiceOutput:
    """What one Service compiles to: intents by key, rejected-input problems, and facts for invalidation."""

    intents: dict[str, LbIntent] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    uses_topology: bool = False  # the output depends on Node zones


def _family_of(ip: str) -> tuple[Family, str] | None:
    if ipv4_canonical(ip) is not None:
        return "ipv4", ip  # already canonical
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return None
    return ("ipv4" if addr.version == 4 else "ipv6"), addr.compressed


def _frontend_ips(svc: Service, problems: list[str]) -> dict[Family, list[tuple[FrontendKind, str]]]:
    by_family: dict[Family, list[tuple[FrontendKind, str]]] = {}
    fields: tuple[tuple[FrontendKind, str, tuple[str, ...]], ...] = (
        ("cluster_ip", "spec.clusterIPs", svc.cluster_ips),
        ("external_ip", "spec.externalIPs", svc.external_ips),
        ("load_balancer", "status.loadBalancer.ingress", svc.load_balancer_ips),
    )
    for kind, where, ips in fields:
        for ip in ips:
            parsed = _family_of(ip)
            if parsed is None:
                problems.append(f"Service {svc.namespace}/{svc.name}: {where}: unparsable address {ip!r}")
                continue
            family, canonical = parsed
            by_family.setdefault(family, []).append((kind, canonical))
    return by_family


def _port_ok(svc: Service, index: int, sp: ServicePort, problems: list[str]) -> bool:
    where = f"Service {svc.namespace}/{svc.name}: spec.ports[{index}]"
    if sp.protocol not in PROTOCOLS:
        problems.append(f"{where}: unsupported or missing protocol {sp.protocol!r}")
        return False
    if not 1 <= sp.port <= 65535:
        problems.append(f"{where}: port {sp.port} out of range")
        return False
    return True


class _Sets:
    """Builds BackendSets, computing each distinct Maglev table once (and reusing earlier ones).

    With ``missing`` given, a table not cached is not built here: the set gets
    an empty placeholder table and its identities go to ``missing``, for the
    caller to build in one batch (several processes on a cold start) and put in
    with :func:`with_tables`.
    """

    def __init__(self, previous: TableCache, current: TableCache, missing: set[Identities] | None) -> None:
        self._previous = previous
        self._current = current
        self._missing = missing

    def make(self, backends: tuple[Backend, ...], when_empty: EmptyAction) -> BackendSet:
        if not backends:
            return BackendSet((), (), when_empty)
        ident = tuple([b.identity for b in backends])
        table = self._current.get(ident)
        if table is None:
            table = self._previous.get(ident)
            if table is None:
                if self._missing is None:
                    table = build_table(ident)
                else:
                    self._missing.add(ident)
                    table = ()  # placeholder, here and in the cache, until the batch is built
            self._current[ident] = table
        # when_empty matters only for an empty set; a fixed value elsewhere avoids rewrites.
        return BackendSet(backends, table)


def _filled(bs: BackendSet, built: Mapping[Identities, tuple[int, ...]]) -> BackendSet:
    if bs.table or not bs.backends:
        return bs
    return BackendSet(bs.backends, built[tuple([b.identity for b in bs.backends])])


def with_tables(intent: LbIntent, built: Mapping[Identities, tuple[int, ...]]) -> LbIntent:
    """``intent`` with the placeholder tables left by a deferred compile replaced from ``built``."""
    if isinstance(intent, LbServicePort):
        internal = _filled(intent.internal, built)
        external = None if intent.external is None else _filled(intent.external, built)
        if internal is intent.internal and external is intent.external:
            return intent
        return replace(intent, internal=internal, external=external)
    if isinstance(intent, LbNodeOverride):
        o_internal = None if intent.internal is None else _filled(intent.internal, built)
        o_external = None if intent.external is None else _filled(intent.external, built)
        if o_internal is intent.internal and o_external is intent.external:
            return intent
        return replace(intent, internal=o_internal, external=o_external)
    return intent


def compile_service(
    svc: Service,
    slices: Iterable[ParsedSlice],
    nodes: Mapping[str, Node],
    service_id: Callable[[str], int],
    *,
    tables: TableCache | None = None,
    previous_tables: TableCache | None = None,
    missing: set[Identities] | None = None,
) -> ServiceOutput:
    """All intents of one Service.  ``service_id`` maps a key suffix to its service-port id.

    ``tables`` collects the Maglev tables built (keyed by backend identities);
    ``previous_tables`` offers tables from the last compile for reuse.  With
    ``missing``, tables in neither are deferred (see :class:`_Sets`).
    """
    out = ServiceOutput()
    if svc.headless or svc.type == "ExternalName":
        return out
    problems = out.problems
    slice_list = list(slices)
    for ps in slice_list:
        problems.extend(ps.problems)
    by_family = _frontend_ips(svc, problems)
    node_port_families: set[Family] = {
        f for f, ips in by_family.items() if any(k == "cluster_ip" for k, _ in ips)
    }
    node_port_families.update("ipv4" if f == "IPv4" else "ipv6" for f in svc.ip_families)
    sets = _Sets(previous_tables or {}, tables if tables is not None else {}, missing)
    affinity = Affinity(svc.session_affinity_timeout) if svc.session_affinity == "ClientIP" else None
    for index, sp in enumerate(svc.ports):
        if not _port_ok(svc, index, sp, problems):
            continue
        node_port = sp.node_port if svc.type in NODE_PORT_TYPES else None
        if node_port is not None and not 1 <= node_port <= 65535:
            problems.append(
                f"Service {svc.namespace}/{svc.name}: spec.ports[{index}]: nodePort {node_port} out of range"
            )
            node_port = None
        for family in FAMILIES:
            frontends = [Frontend(kind, ip, sp.port) for kind, ip in by_family.get(family, ())]
            if node_port is not None and family in node_port_families:
                frontends.append(Frontend("node_port", None, node_port))
            if not frontends:
                continue
            family_slices = [ps for ps in slice_list if ps.family == family]
            cands, found = candidates(sp, sorted(family_slices, key=lambda ps: ps.name))
            if not found and any(ps.slice.ports and ps.endpoints for ps in family_slices):
                problems.append(
                    f"Service {svc.namespace}/{svc.name}: spec.ports[{index}]: no {family} EndpointSlice "
                    f"has a {sp.protocol} port named {sp.name or ''!r}"
                )
            topology = has_hints(cands)
            out.uses_topology |= topology
            _compile_port(out, svc, sp, family, frontends, cands, topology, nodes, service_id, sets, affinity)
    return out


def _compile_port(
    out: ServiceOutput,
    svc: Service,
    sp: ServicePort,
    family: Family,
    frontends: list[Frontend],
    cands: list[Candidate],
    topology: bool,
    nodes: Mapping[str, Node],
    service_id: Callable[[str], int],
    sets: _Sets,
    affinity: Affinity | None,
) -> None:
    suffix = service_port_suffix(svc.namespace, svc.name, sp.protocol, sp.port, family)
    ident = service_id(suffix)
    internal_local = svc.internal_traffic_policy == "Local"
    external_local = svc.external_traffic_policy == "Local"
    has_external = any(f.external for f in frontends)
    everyone = cluster_backends(cands)
    # kube-proxy: no usable endpoint at all → reject; endpoints exist but none local → drop.
    when_empty: EmptyAction = "drop" if everyone else "reject"
    internal_g: tuple[Backend, ...] = () if internal_local else everyone
    external_g: tuple[Backend, ...] | None = None
    if has_external and external_local != internal_local:
        external_g = () if external_local else everyone
    local_needed = internal_local or (has_external and external_local)
    nodes_of_interest: set[str] = set()
    if local_needed:
        nodes_of_interest.update(c.backend.node for c in cands if c.backend.node)
    if topology:
        nodes_of_interest.update(nodes)
    overrides: dict[str, LbNodeOverride] = {}
    for node in sorted(nodes_of_interest):
        known = nodes.get(node)
        cluster_n = (
            cluster_backends(cands, node=node, zone=known.zone if known else None) if topology else everyone
        )
        local_n = local_backends(cands, node) if local_needed else ()
        internal_n = local_n if internal_local else cluster_n
        ov_internal = internal_n if internal_n != internal_g else None
        effective_internal = internal_g if ov_internal is None else ov_internal
        ov_external: tuple[Backend, ...] | None = None
        if has_external:
            external_n = local_n if external_local else cluster_n
            default_external = external_g if external_g is not None else effective_internal
            ov_external = external_n if external_n != default_external else None
        if ov_internal is None and ov_external is None:
            continue
        overrides[node] = LbNodeOverride(
            id=ident,
            internal=None if ov_internal is None else sets.make(ov_internal, when_empty),
            external=None if ov_external is None else sets.make(ov_external, when_empty),
        )
    intent = LbServicePort(
        id=ident,
        namespace=svc.namespace,
        service=svc.name,
        family=family,
        protocol=sp.protocol,
        port=sp.port,
        port_name=sp.name or None,
        frontends=tuple(sorted(frontends, key=lambda f: (f.kind, f.ip or "", f.port))),
        internal=sets.make(internal_g, when_empty),
        external=None if external_g is None else sets.make(external_g, when_empty),
        external_snat=not external_local,
        affinity=affinity,
        node_specific=local_needed or topology,
    )
    out.intents[service_key(svc.namespace, svc.name, sp.protocol, sp.port, family)] = intent
    for node, override in overrides.items():
        key = node_override_key(node, svc.namespace, svc.name, sp.protocol, sp.port, family)
        out.intents[key] = override


def compile_node(node: Node) -> tuple[str, LbNodeAddresses]:
    """The node's NodePort addresses (InternalIP and ExternalIP; unparsable ones are skipped)."""
    addrs: set[tuple[int, int, str]] = set()
    for na in node.addresses:
        if na.type not in NODE_ADDRESS_TYPES:
            continue
        try:
            addr = ipaddress.ip_address(na.address)
        except ValueError:
            logger.warning("node %s: skipping unparsable %s address %r", node.name, na.type, na.address)
            continue
        addrs.add((addr.version, int(addr), addr.compressed))
    return node_addresses_key(node.name), LbNodeAddresses(node.name, tuple(a[2] for a in sorted(addrs)))
