"""Endpoint selection for one Service port, with kube-proxy's rules.  Pure.

* Endpoints come from every EndpointSlice of the Service of the family's
  address type (FQDN slices are ignored); an endpoint's address is its first
  address (as the discovery API tells consumers to use).
* The target port is resolved per slice: the slice port whose name (``""`` and
  None alike) and protocol match the Service port carries the number, so named
  targetPorts resolve per endpoint.
* The same ``ip:port`` in several slices counts once, with its most usable
  conditions (ready over serving over neither; then the lowest slice name).
* Cluster set: ready endpoints (narrowed by topology hints where usable); if
  none is ready, serving-and-terminating ones.  Local set (a node's): the same
  rule over the endpoints on that node.
* Topology: node hints (PreferSameNode) when every ready endpoint has one and
  one names the node; else zone hints (PreferClose / topology-aware routing)
  when every ready endpoint has one and one names the node's zone; else no
  narrowing (kube-proxy's fallback).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from xpunet.ir.lb import Backend, Family
from xpunet.model.objects import Endpoint, EndpointSlice, ServicePort

ADDRESS_TYPE_FAMILY: dict[str, Family] = {"IPv4": "ipv4", "IPv6": "ipv6"}


@dataclass(frozen=True, slots=True)
class ParsedEndpoint:
    ip: str  # canonical (compressed) form
    ip_int: int  # for numeric ordering
    endpoint: Endpoint


@dataclass(frozen=True, slots=True)
class ParsedSlice:
    """An EndpointSlice with its addresses validated once, at update time."""

    name: str
    family: Family | None  # None: FQDN (ignored)
    slice: EndpointSlice
    endpoints: tuple[ParsedEndpoint, ...]
    problems: tuple[str, ...]


_OCTETS = {str(i): i for i in range(256)}  # exactly the canonical spellings of an octet


def ipv4_canonical(text: str) -> int | None:
    """A canonical dotted quad as an int, or None to let ``ipaddress`` decide (it is ~5x slower).

    Accepts exactly the strings that are already canonical: four decimal
    octets without leading zeros, each <= 255 (so the text is its own
    compressed form).  Anything else (IPv6, junk, "010.1.1.1") takes the
    general path.
    """
    parts = text.split(".")
    if len(parts) != 4:
        return None
    octets = _OCTETS
    a, b, c, d = parts
    try:
        return (octets[a] << 24) | (octets[b] << 16) | (octets[c] << 8) | octets[d]
    except KeyError:
        return None


def parse_slice(es: EndpointSlice) -> ParsedSlice:
    family = ADDRESS_TYPE_FAMILY.get(es.address_type)
    if family is None:
        return ParsedSlice(es.name, None, es, (), ())
    version = 4 if family == "ipv4" else 6
    parsed: list[ParsedEndpoint] = []
    problems: list[str] = []
    for i, ep in enumerate(es.endpoints):
        if not ep.addresses:
            problems.append(f"EndpointSlice {es.name}: endpoints[{i}]: no address")
            continue
        if version == 4:
            fast = ipv4_canonical(ep.addresses[0])
            if fast is not None:
                parsed.append(ParsedEndpoint(ep.addresses[0], fast, ep))
                continue
        try:
            addr = ipaddress.ip_address(ep.addresses[0])
        except ValueError:
            problems.append(
                f"EndpointSlice {es.name}: endpoints[{i}]: unparsable address {ep.addresses[0]!r}"
            )
            continue
        if addr.version != version:
            problems.append(
                f"EndpointSlice {es.name}: endpoints[{i}]: address {ep.addresses[0]!r} "
                f"is not {es.address_type}"
            )
            continue
        parsed.append(ParsedEndpoint(addr.compressed, int(addr), ep))
    for j, port in enumerate(es.ports):
        if not 1 <= port.port <= 65535:
            problems.append(f"EndpointSlice {es.name}: ports[{j}]: port {port.port} out of range")
    return ParsedSlice(es.name, family, es, tuple(parsed), tuple(problems))


def likely_identities(ps: ParsedSlice) -> list[tuple[str, ...]]:
    """The backend identities a Service port this slice alone serves would get, one tuple per slice port.

    Its ready endpoints in (address, port) order, as :func:`candidates` and
    :func:`cluster_backends` give them when there is a single slice, all
    ready, without topology narrowing: the common case, worth building the
    Maglev table for before the Service is compiled.  Only a guess.
    """
    if ps.family is None:
        return []
    ready = sorted({pe.ip_int: pe.ip for pe in ps.endpoints if pe.endpoint.ready}.items())
    if not ready:
        return []
    ports = sorted({p.port for p in ps.slice.ports if 1 <= p.port <= 65535})
    return [tuple([f"{ip},{port}" for _, ip in ready]) for port in ports]


@dataclass(frozen=True, slots=True)
class Candidate:
    """A possible backend of one Service port with the conditions that decide its use."""

    backend: Backend
    sort_key: tuple[int, int]
    ready: bool
    serving: bool
    terminating: bool
    zone_hints: tuple[str, ...]
    node_hints: tuple[str, ...]


def slice_port(ps: ParsedSlice, sp: ServicePort) -> int | None:
    """The target port this slice gives the Service port, or None if the slice does not carry it."""
    want = sp.name or ""
    for port in ps.slice.ports:
        if (port.name or "") == want and port.protocol == sp.protocol and 1 <= port.port <= 65535:
            return port.port
    return None


def candidates(sp: ServicePort, slices: Iterable[ParsedSlice]) -> tuple[list[Candidate], bool]:
    """Merged candidates of ``sp`` from ``slices`` (one family), sorted by (ip, port).

    Also says whether some slice carried the port at all (to report a Service
    port that no slice knows).
    """
    best: dict[tuple[int, int], tuple[int, str, ParsedEndpoint, int]] = {}
    found = False
    for ps in slices:
        target = slice_port(ps, sp)
        if target is None:
            continue
        found = True
        name = ps.name
        for pe in ps.endpoints:
            key = (pe.ip_int, target)
            ep = pe.endpoint
            rank = 2 if ep.ready else 1 if ep.serving else 0  # ready over serving over neither
            old = best.get(key)
            # Most usable conditions win; equal ones go to the lowest slice name (order-independent).
            if old is None or rank > old[0] or (rank == old[0] and name < old[1]):
                best[key] = (rank, name, pe, target)
    out: list[Candidate] = []
    for key in sorted(best):
        _, _, pe, target = best[key]
        ep = pe.endpoint
        out.append(
            Candidate(
                Backend(pe.ip, target, ep.node_name, ep.zone),
                key,
                ep.ready,
                ep.serving,
                ep.terminating,
                ep.hints_for_zones,
                ep.hints_for_nodes,
            )
        )
    return out, found


def has_hints(cands: Sequence[Candidate]) -> bool:
    return any(c.zone_hints or c.node_hints for c in cands if c.ready)


def _topology(ready: list[Candidate], node: str, zone: str | None) -> list[Candidate]:
    if all(c.node_hints for c in ready):
        same_node = [c for c in ready if node in c.node_hints]
        if same_node:
            return same_node
    if zone and all(c.zone_hints for c in ready):
        same_zone = [c for c in ready if zone in c.zone_hints]
        if same_zone:
            return same_zone
    return ready


def cluster_backends(
    cands: Sequence[Candidate], *, node: str | None = None, zone: str | None = None
) -> tuple[Backend, ...]:
    """The cluster-policy set; narrowed by topology for ``node`` (None: no topology, the fallback)."""
    ready = [c for c in cands if c.ready]
    if ready:
        if node is not None:
            ready = _topology(ready, node, zone)
        return tuple(c.backend for c in ready)
    return tuple(c.backend for c in cands if c.serving and c.terminating)


def local_backends(cands: Sequence[Candidate], node: str) -> tuple[Backend, ...]:
    """The Local-policy set of ``node``: its ready endpoints, else its serving-and-terminating ones."""
    local = [c for c in cands if c.backend.node == node]
    ready = tuple(c.backend for c in local if c.ready)
    if ready:
        return ready
    return tuple(c.backend for c in local if c.serving and c.terminating)
