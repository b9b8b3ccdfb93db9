"""Pipeline table entries → the kernel objects that implement them: nft elements, counters, routes.  Pure.

:class:`KernelState` holds the entries a kernel target carries and, per
*unit*, the kernel items that unit renders to.  A unit is the smallest group
of entries whose kernel form depends only on themselves: one port, one
endpoint (its ports, addresses, host routes and ACL rules), one frontend
(with its backend group and Maglev buckets), one IP-set table, one route.
An update re-renders only the units the changed entries touch and returns
the item difference, so one endpoint change costs the same at any scale.

Items are ``(container, key) → value``: an element of a set or map of the
``inet xpunet`` table (see ``ruleset``), a named counter (container
``@counter``), a pick chain (``@chain``) or a route (``@route``).  Several
units may need the same item (a pick chain, a pod interface); it exists while
at least one does.  Keys are canonical so that
what nft lists back compares equal: in interval containers every non-name
component is an inclusive ``(low, high)`` pair.

Maglev is not copied bucket by bucket: a group's K distinct backends fill
slots 0..K-1 of the frontend's backend map and the kernel picks
``jhash mod K``, so a 10-backend service costs 10 elements per frontend
instead of ~1,000 buckets.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import cast

from xpunet.datapath.kernel.lpm import LpmIntervals
from xpunet.datapath.kernel.lpm import merge as _merge
from xpunet.datapath.kernel.ruleset import (
    AFFINITY_CT_MARK,
    AFFINITY_GROUP_MASK,
    CONTAINERS,
    INTERNAL_SLOT_OFFSET,
    L4_PROTOCOLS,
    affinity_chain_name,
    pick_chain_name,
)
from xpunet.datapath.kernel.slots import backend_slots
from xpunet.datapath.kernel.vxlan import (
    DEFAULT_IFNAME,
    gateway,
    next_hop_vtep,
    render_overlay,
)
from xpunet.pipeline.diff import Update
from xpunet.pipeline.entries import EntryKey, Exact, Lpm, Range, TableEntry, Ternary
from xpunet.pipeline.schema import (
    CT_CLOSING,
    CT_ESTABLISHED,
    CT_NEW,
    FLAG_AFFINITY,
    FLAG_LOCAL_PODS_USE_INTERNAL,
    FLAG_SNAT_TO_NODE,
    SET_BITS,
)

ItemKey = tuple[str, tuple[object, ...]]
Items = dict[ItemKey, object]
Unit = tuple[object, ...]
COUNTER = "@counter"
ROUTE = "@route"
CHAIN = "@chain"
CT_TIMEOUT = "@ct_timeout"
"""A named ``ct timeout`` object: ``(name,) → ((state, seconds), ...)``."""
AFFINITY_LIVE = "@affinity_live"
"""Not a kernel object: ``(version, group) → backends`` of a ClientIP-affinity group, so the target
can purge learned affinity entries whose backend left the group."""
VIRTUAL = frozenset({AFFINITY_LIVE})
_L4_BY_NUMBER = {n: name for name, n in L4_PROTOCOLS.items()}


@dataclass(slots=True)
class Delta:
    """Items to delete (with their old value) and to add; a changed value appears in both."""

    delete: Items = field(default_factory=dict)
    add: Items = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.delete or self.add)

    def __len__(self) -> int:
        return len(self.delete) + len(self.add)


def counter_name(entry: TableEntry) -> str:
    """The named nft counter of an ACL entry: stable for the entry's key."""
    digest = hashlib.blake2b(repr(entry.key).encode(), digest_size=8).hexdigest()
    return f"acl_{digest}"


_ALIASES: dict[str, str] = {}


def _alias(table: str) -> str:
    a = _ALIASES.get(table)
    if a is None:
        a = _ALIASES[table] = table.rsplit(".", 1)[-1]
    return a


_KINDS: dict[str, str] = {}  # table name → how the table is indexed (see KernelState._index)


def _kind_of(alias: str) -> str:
    if alias.startswith("maglev_backend"):
        return "maglev"
    if alias == "backend_group":
        return "head"
    if alias.startswith(("service_frontend", "node_port")):
        return "fe"
    if alias == "port_info":
        return "port"
    if alias.startswith("endpoint_by_ip"):
        return "ep_ip"
    if alias in ("acl_egress", "acl_ingress"):
        return "acl"
    if alias.startswith("fib_"):
        return "fib"
    if alias == "next_hop":
        return "next_hop"
    if alias.startswith("ip_set_"):
        return "ipset"
    if alias.startswith("node_address"):
        return "node_addr"
    if alias == "ct_timeout":
        return "ct"
    return ""


def _link(index: dict[int, set[EntryKey]], k: int, ekey: EntryKey, add: bool) -> None:
    if add:
        s = index.get(k)
        if s is None:
            index[k] = {ekey}
        else:
            s.add(ekey)
    else:
        s = index.get(k)
        if s is not None:
            s.discard(ekey)
            if not s:
                del index[k]


def _link_addr(
    index: dict[tuple[int, int], set[EntryKey]], k: tuple[int, int], ekey: EntryKey, add: bool
) -> None:
    if add:
        index.setdefault(k, set()).add(ekey)
    else:
        s = index.get(k)
        if s is not None:
            s.discard(ekey)
            if not s:
                del index[k]


_SCANNED = frozenset({"port", "ipset", "next_hop", "ct"})  # kinds whose tables the renderers scan


def _link_entry(
    index: dict[int, dict[EntryKey, TableEntry]], k: int, ekey: EntryKey, e: TableEntry, add: bool
) -> None:
    if add:
        d = index.get(k)
        if d is None:
            index[k] = {ekey: e}
        else:
            d[ekey] = e
    else:
        d = index.get(k)
        if d is not None:
            d.pop(ekey, None)
            if not d:
                del index[k]


def _exact(e: TableEntry, name: str) -> int:
    m = e.match_of(name)
    return m.value if isinstance(m, Exact) else 0


def _fam(e: TableEntry) -> int:
    return 6 if e.table.endswith("_v6") else 4


class KernelState:
    """Applied entries, their indexes, and the items of every unit.  Mutated only by :meth:`update`."""

    def __init__(
        self, port_names: Mapping[int, str] | None = None, *, vxlan_ifname: str = DEFAULT_IFNAME
    ) -> None:
        self.port_names: dict[int, str] = dict(port_names or {})
        self.vxlan_ifname = vxlan_ifname
        self._host_fib: dict[EntryKey, TableEntry] = {}  # deliver_host entries: the node's own addresses
        self.entries: dict[EntryKey, TableEntry] = {}
        self.units: dict[Unit, Items] = {}
        self._refs: dict[ItemKey, int] = {}  # how many units render each item
        self.problems: dict[Unit, list[str]] = {}
        self._by_endpoint: dict[int, set[EntryKey]] = {}
        self._heads: dict[int, dict[EntryKey, TableEntry]] = {}  # backend_group entries by group
        self._maglev: dict[int, dict[EntryKey, TableEntry]] = {}  # maglev_backend_* entries by group
        self._fe_by_group: dict[int, set[EntryKey]] = {}
        # Frontend addresses that are also node addresses shadow NodePorts (see ruleset._node_port).
        self._fe_by_addr: dict[tuple[int, int], set[EntryKey]] = {}
        self._node_addrs: set[tuple[int, int]] = set()
        self._fib_by_nh: dict[int, set[EntryKey]] = {}
        self._backends: dict[
            tuple[int, int], list[tuple[int, int]]
        ] = {}  # per _rerender: (group, v) → backend per slot
        self._by_table: dict[str, dict[EntryKey, TableEntry]] = {}  # tables rendered by scanning
        self._lpm: dict[str, LpmIntervals] = {}  # ip_set_* alias → its prefixes and bit intervals

    # --- bookkeeping ------------------------------------------------------------------

    def items(self) -> Items:
        """Every item the applied entries render to."""
        out: Items = {}
        for items in self.units.values():
            out.update(items)
        return out

    def _index(self, e: TableEntry, add: bool, ekey: EntryKey | None = None) -> Iterable[Unit]:
        """Add or remove ``e`` from the indexes; returns the units it touches.

        The hot path of a from-empty apply (130k entries for 10,000 services), hence the table kind
        looked up once per table name and the Maglev/group case first.
        """
        if ekey is None:
            ekey = e.key  # a property building a tuple: callers that have it pass it
        table = e.table
        kind = _KINDS.get(table)
        if kind is None:
            kind = _KINDS[table] = _kind_of(_alias(table))
        if kind == "maglev" or kind == "head":  # ~10 of every 13 entries at scale
            group = _exact(e, "backend_group")
            _link_entry(self._maglev if kind == "maglev" else self._heads, group, ekey, e, add)
            fes = self._fe_by_group.get(group)
            return [("fe", k) for k in fes] if fes else ()
        if kind in _SCANNED:
            tbl = self._by_table.get(table)
            if tbl is None:
                tbl = self._by_table[table] = {}
            if add:
                tbl[ekey] = e
            else:
                tbl.pop(ekey, None)
        if kind == "fe":
            _link(self._fe_by_group, e.param("backend_group"), ekey, add)
            if e.param("flags") & FLAG_LOCAL_PODS_USE_INTERNAL:
                # Local pods use the internal group: the frontend renders it too.
                _link(self._fe_by_group, internal_group(e), ekey, add)
            if not table.endswith(("node_port_v4", "node_port_v6")):
                _link_addr(self._fe_by_addr, (_fam(e), _exact(e, "dst_addr")), ekey, add)
            return (("fe", ekey),)
        if kind == "port":
            units: list[Unit] = [("port", _exact(e, "in_port"))]
            if e.action.endswith("from_endpoint"):
                ep = e.param("endpoint_id")
                _link(self._by_endpoint, ep, ekey, add)
                units.append(("ep", ep))
            return units
        if kind == "ep_ip" or kind == "acl":
            ep = e.param("endpoint_id") if kind == "ep_ip" else _exact(e, "endpoint_id")
            _link(self._by_endpoint, ep, ekey, add)
            return (("ep", ep),)
        if kind == "fib":
            units = [("route", ekey)]
            if e.action.endswith("deliver_host"):
                if add:
                    self._host_fib[ekey] = e
                else:
                    self._host_fib.pop(ekey, None)
                units.append(("vxlan", 0))
            elif e.action.endswith("deliver_local"):
                ep = e.param("endpoint_id")
                _link(self._by_endpoint, ep, ekey, add)
                units.append(("ep", ep))
            elif e.action.endswith("route_via"):
                _link(self._fib_by_nh, e.param("next_hop_id"), ekey, add)
            return units
        if kind == "next_hop":
            return [("vxlan", 0), *(("route", k) for k in self._fib_by_nh.get(_exact(e, "next_hop_id"), ()))]
        if kind == "ipset":
            alias = _alias(table)
            lpm = self._lpm.get(alias)
            if lpm is None:
                lpm = self._lpm[alias] = LpmIntervals(32 if alias.endswith("v4") else 128)
            side = alias.split("_")[2]
            m = e.match_of(f"{side}_addr")
            prefix = (m.value, m.prefix_len) if isinstance(m, Lpm) else (0, 0)
            if add:
                lpm.put(prefix, e.param("sets") if e.action.endswith(f"set_{side}_sets") else 0)
            else:
                lpm.remove(prefix)
            return (("ipset", alias),)
        if kind == "node_addr":
            addr = (_fam(e), _exact(e, "dst_addr"))
            if add:
                self._node_addrs.add(addr)
            else:
                self._node_addrs.discard(addr)
            return (("node_addr", ekey), *(("fe", k) for k in self._fe_by_addr.get(addr, ())))
        if kind == "ct":
            return (("ct", 0),)
        return ()

    def set_port_names(self, names: Mapping[int, str]) -> Delta:
        """Change the port → interface name map; re-renders every unit that names interfaces."""
        self.port_names = dict(names)
        dirty: set[Unit] = {u for u in self.units if u[0] in ("port", "ep", "route", "vxlan")}
        dirty.add(("vxlan", 0))
        for e in self.entries.values():
            if e.alias == "port_info":
                dirty.add(("port", _exact(e, "in_port")))
            elif e.alias.startswith("fib_"):
                dirty.add(("route", e.key))
            elif e.alias.startswith("endpoint_by_ip") or e.alias.startswith("acl_"):
                dirty.update(self._index(e, add=True))
        return self._rerender(dirty)

    # --- updates --------------------------------------------------------------------------

    def update(self, updates: Iterable[Update]) -> Delta:
        """Apply entry updates (INSERT/MODIFY/DELETE, idempotently); returns the item difference."""
        dirty: set[Unit] = set()
        entries = self.entries
        index = self._index
        for u in updates:
            e = u.entry
            key = e.key
            old = entries.get(key)
            if old is not None:
                dirty.update(index(old, False, key))
                del entries[key]
            if u.kind != "DELETE":
                entries[key] = e
                dirty.update(index(e, True, key))
        return self._rerender(dirty)

    def replace_all(self, entries: Iterable[TableEntry]) -> Delta:
        """Make the applied entries exactly ``entries``."""
        new = {e.key: e for e in entries}
        ups = [Update("DELETE", e) for k, e in self.entries.items() if k not in new]
        ups += [
            Update("INSERT", e) for k, e in new.items() if self.entries.get(k) != e or k not in self.entries
        ]
        return self.update(ups)

    def _rerender(self, dirty: set[Unit]) -> Delta:
        delta = Delta()
        self._backends.clear()
        refs = self._refs
        for unit in dirty:
            if unit[0] == "ipset":
                self._rerender_ipset(cast(str, unit[1]), delta)
                continue
            problems: list[str] = []
            new = self._render(unit, problems)
            old = self.units.get(unit, {})
            for k, v in old.items():
                if new.get(k, delta) == v:
                    continue
                refs[k] -= 1
                if refs[k] == 0:
                    del refs[k]
                    if k in delta.add and delta.add[k] == v:
                        del delta.add[k]  # added and dropped within this update
                    else:
                        delta.delete[k] = v
            for k, v in new.items():
                if old.get(k, delta) == v:
                    continue
                n = refs.get(k, 0)
                refs[k] = n + 1
                if n == 0:
                    if delta.delete.get(k, delta) == v:
                        del delta.delete[k]  # moved between units: nothing to do
                    else:
                        delta.add[k] = v
            if new:
                self.units[unit] = new
            else:
                self.units.pop(unit, None)
            if problems:
                self.problems[unit] = problems
            else:
                self.problems.pop(unit, None)
        return delta

    def _rerender_ipset(self, alias: str, delta: Delta) -> None:
        """An IP-set table's interval items, changed only where its changed prefixes reach (lpm.py)."""
        lpm = self._lpm.get(alias)
        if lpm is None:
            return
        _, _, side, fam = alias.split("_")
        container = f"{side}{fam[1]}_b"
        unit: Unit = ("ipset", alias)
        items = self.units.setdefault(unit, {})
        refs = self._refs
        gone, came = lpm.flush()
        for b, span in gone:
            k: ItemKey = (f"{container}{b}", (span,))
            del items[k]
            refs[k] -= 1
            if refs[k] == 0:
                del refs[k]
                if k in delta.add:
                    del delta.add[k]
                else:
                    delta.delete[k] = None
        for b, span in came:
            k = (f"{container}{b}", (span,))
            items[k] = None
            n = refs.get(k, 0)
            refs[k] = n + 1
            if n == 0:
                if k in delta.delete:
                    del delta.delete[k]
                else:
                    delta.add[k] = None
        if not items:
            del self.units[unit]
            if not lpm.prefixes:
                del self._lpm[alias]

    # --- rendering ----------------------------------------------------------------------------

    def _render(self, unit: Unit, problems: list[str]) -> Items:
        kind, arg = unit[0], unit[1]
        if kind == "port":
            return self._render_port(cast(int, arg))
        if kind == "ep":
            return self._render_endpoint(cast(int, arg), problems)
        if kind == "fe":
            return self._render_frontend(cast(EntryKey, arg), problems)
        if kind == "node_addr":
            e = self.entries.get(cast(EntryKey, arg))
            if e is None:
                return {}
            return {(f"node_addr{_fam(e)}", (_exact(e, "dst_addr"),)): None}
        if kind == "route":
            return self._render_route(cast(EntryKey, arg), problems)
        if kind == "ct":
            return self._render_ct_timeouts()
        if kind == "vxlan":
            return render_overlay(
                self._by_table.get("ingress.next_hop", {}).values(),
                self._host_fib.values(),
                self.port_names,
                self.vxlan_ifname,
                problems,
            )
        return {}

    def _render_port(self, port: int) -> Items:
        e = next(
            (x for x in self._by_table.get("ingress.port_info", {}).values() if _exact(x, "in_port") == port),
            None,
        )
        name = self.port_names.get(port)
        if e is None or name is None:
            return {}
        if e.action.endswith("from_uplink"):
            return {("port_kind", (name,)): "goto:svc_check"}
        if e.action.endswith("from_endpoint"):
            return {
                ("port_kind", (name,)): "goto:from_pod",
                ("pod_ifs", (name,)): None,
                ("hairpin", (name, name)): None,
            }
        return {}  # from_host: host traffic enters through the output hook, not an interface

    def _render_endpoint(self, ep: int, problems: list[str]) -> Items:
        out: Items = {}
        mine = [self.entries[k] for k in sorted(self._by_endpoint.get(ep, ()), key=repr)]
        in_ifs: list[str] = []
        out_ifs: list[str] = []
        for e in mine:
            if e.alias == "port_info":
                name = self.port_names.get(_exact(e, "in_port"))
                if name is not None:
                    in_ifs.append(name)
            elif e.alias.startswith("fib_"):
                name = self.port_names.get(e.param("port"))
                if name is not None:
                    out_ifs.append(name)
                    out[("pod_oifs", (name,))] = None
        for e in mine:
            if e.alias.startswith("endpoint_by_ip"):
                for name in in_ifs:
                    out[(f"ep_src{_fam(e)}", (name, _exact(e, "src_addr")))] = None
        for direction, ifs in (("egress", in_ifs), ("ingress", out_ifs)):
            acl = [e for e in mine if e.alias == f"acl_{direction}"]
            for e in acl:
                out[(COUNTER, (counter_name(e),))] = None
            out.update(_render_acl(direction, acl, ifs, problems))
        return out

    def _render_frontend(self, key: EntryKey, problems: list[str]) -> Items:
        fe = self.entries.get(key)
        if fe is None:
            return {}
        nodeport = fe.alias.startswith("node_port")
        port = _exact(fe, "dst_port")
        proto = _exact(fe, "protocol")
        # reject/drop/snat sets are keyed (addr,) proto, port; backend maps (addr,) port, slot.
        fkey: tuple[object, ...] = (port,) if nodeport else (_exact(fe, "dst_addr"), port)
        skey: tuple[object, ...] = (proto, port) if nodeport else (_exact(fe, "dst_addr"), proto, port)
        flags = fe.param("flags")
        out: Items = {}
        if not nodeport and (_fam(fe), _exact(fe, "dst_addr")) in self._node_addrs:
            # The pipeline never consults node_port for this address, protocol and port.
            out[(f"np_shadow{_fam(fe)}", skey)] = None
        if flags & FLAG_SNAT_TO_NODE:
            out[(f"{'np' if nodeport else 'fe'}_snat{_fam(fe)}", skey)] = None
        self._render_group(out, fe, fe.param("backend_group"), fkey, skey, False, problems)
        if flags & FLAG_LOCAL_PODS_USE_INTERNAL:
            self._render_group(out, fe, internal_group(fe), fkey, skey, True, problems)
        return out

    def _render_group(
        self,
        out: Items,
        fe: TableEntry,
        group: int,
        fkey: tuple[object, ...],
        skey: tuple[object, ...],
        internal: bool,
        problems: list[str],
    ) -> None:
        """A frontend's use of ``group``: its own (everyone), or the internal one (local pods)."""
        v = _fam(fe)
        nodeport = fe.alias.startswith("node_port")
        pre = "np" if nodeport else "fe"
        own = "ni" if nodeport else "fi"  # the local pods' containers
        flags = fe.param("flags")
        l4 = _L4_BY_NUMBER.get(_exact(fe, "protocol"))

        def drop() -> None:
            if internal:
                out[(f"{own}_chk{v}", skey)] = "goto:drop_no_backend"
            else:
                out[(f"{pre}_drop{v}", skey)] = None

        heads = self._heads.get(group)
        g = next(iter(heads.values())) if heads else None
        if g is None or g.action.endswith("drop_empty_group"):
            drop()
            return
        if g.action.endswith("reject_empty_group"):
            if internal:
                out[(f"{own}_chk{v}", skey)] = "goto:reject_no_backend"
            else:
                out[(f"{pre}_reject{v}", skey)] = None
            return
        if l4 is None:
            if not internal:
                problems.append(
                    f"{fe.alias}: protocol {_exact(fe, 'protocol')} has no ports to balance on; dropped"
                )
            drop()
            return
        slots = self._backends.get((group, v))
        if slots is None:
            buckets = g.param("bucket_count")
            maglev = f"maglev_backend_v{v}"
            counts: dict[tuple[int, int], int] = {}
            for e in self._maglev.get(group, {}).values():
                if _alias(e.table) == maglev and _exact(e, "bucket") < buckets:
                    b = (e.param("addr"), e.param("port"))
                    counts[b] = counts.get(b, 0) + 1
            slots = backend_slots(counts)
            self._backends[(group, v)] = slots
        if not slots:
            drop()
            return
        affinity = bool(flags & FLAG_AFFINITY)
        if affinity and not 0 < group <= AFFINITY_GROUP_MASK:
            problems.append(f"{fe.alias}: group {group} does not fit the connection mark; no affinity")
            affinity = False
        kind = own if internal else pre
        if affinity:
            learn = affinity_chain_name(fe.param("affinity_timeout"))
            out[(f"{kind}_aff{v}", skey)] = AFFINITY_CT_MARK | group
            out[(CHAIN, (learn,))] = None
            out[("aff_rec", (group,))] = f"goto:{learn}"
            out[(AFFINITY_LIVE, (v, group))] = tuple(sorted(set(slots)))
        chain = pick_chain_name(kind, v, affinity, len(slots))
        out[(CHAIN, (chain,))] = None
        out[(f"{kind}_pick{v}", skey)] = f"goto:{chain}"
        if internal:
            out[(f"{own}_chk{v}", skey)] = "accept"
        base = INTERNAL_SLOT_OFFSET if internal else 0
        for slot, backend in enumerate(slots):
            out[(f"{pre}_be{v}_{l4}", (*fkey, base + slot))] = backend

    def _render_ct_timeouts(self) -> Items:
        seconds: dict[tuple[int, int], int] = {}
        for e in self._by_table.get("ingress.ct_timeout", {}).values():
            if e.action.endswith("set_ct_timeout"):
                seconds[(_exact(e, "protocol"), _exact(e, "ct_state"))] = e.param("seconds")
        out: Items = {}
        for l4, states in _CT_POLICY_STATES.items():
            proto = L4_PROTOCOLS[l4]
            policy = tuple(
                sorted(
                    (name, seconds[(proto, st)])
                    for st, names in states.items()
                    if (proto, st) in seconds
                    for name in names
                )
            )
            if not policy:
                continue  # the kernel's own timeouts (use_builtin_ct_timeout)
            digest = hashlib.blake2b(repr(policy).encode(), digest_size=4).hexdigest()
            for v, nfproto in ((4, _NFPROTO_IPV4), (6, _NFPROTO_IPV6)):
                name = f"ctto_{l4}{v}_{digest}"
                out[(CT_TIMEOUT, (name,))] = policy
                out[(CHAIN, (name,))] = None
                out[("ct_to", (nfproto, proto))] = f"goto:{name}"
        return out

    def _render_route(self, key: EntryKey, problems: list[str]) -> Items:
        e = self.entries.get(key)
        if e is None:
            return {}
        m = e.match_of("dst_addr")
        v = _fam(e)
        dst, plen = (m.value, m.prefix_len) if isinstance(m, Lpm) else (0, 0)
        rkey = (v, dst, plen)
        if e.action.endswith("deliver_local"):
            name = self.port_names.get(e.param("port"))
            if name is None:
                problems.append(f"{e.alias}: port {e.param('port')} has no interface; no route")
                return {}
            return {(ROUTE, rkey): (None, name)}
        if e.action.endswith("route_via"):
            nh_id = e.param("next_hop_id")
            nh = next(
                (
                    x
                    for x in self._by_table.get("ingress.next_hop", {}).values()
                    if _exact(x, "next_hop_id") == nh_id
                ),
                None,
            )
            if nh is None:
                return {}  # fail closed: no route, the kernel drops (the pipeline's drop_no_route)
            name = self.port_names.get(nh.param("port"))
            if name is None:
                problems.append(f"next_hop {nh_id}: port {nh.param('port')} has no interface; no route")
                return {}
            if nh.action.endswith(f"via_direct_v{v}"):
                if (dst, plen) == (nh.param("node_addr"), 32 if v == 4 else 128):
                    # The next hop itself is on-link; IPv6 refuses a gateway reached via a gateway.
                    return {(ROUTE, rkey): (None, name)}
                return {(ROUTE, rkey): (nh.param("node_addr"), name)}
            if ".via_vxlan_" in nh.action or nh.action.startswith("via_vxlan_"):
                gw = gateway(v, next_hop_vtep(nh))
                if gw is None:
                    problems.append(f"next_hop {nh_id}: an IPv4 route cannot use an IPv6 VTEP; no route")
                    return {}
                # IPv4 via the VTEP itself, on-link on the device; IPv6 via a link-local address.
                onlink = ("onlink",) if v == 4 else ()
                return {(ROUTE, rkey): (gw, self.vxlan_ifname, *onlink)}
            problems.append(
                f"next_hop {nh_id}: {nh.action.rsplit('.', 1)[-1]} is not supported by the kernel target"
            )
            return {}
        return {}  # deliver_host: the node's own addresses are local routes already


def internal_group(fe: TableEntry) -> int:
    """The service's internal backend group, which local pods use under FLAG_LOCAL_PODS_USE_INTERNAL."""
    return int(fe.param("service_port_id")) << 1


_NFPROTO_IPV4 = 2
_NFPROTO_IPV6 = 10
# The pipeline's three conntrack states → the kernel's TCP/UDP states they stand for.  nft 1.0.6 can
# declare timeout policies for TCP and UDP only, so SCTP and ICMP keep the kernel's timeouts.
_CT_POLICY_STATES: dict[str, dict[int, tuple[str, ...]]] = {
    "tcp": {
        CT_NEW: ("syn_sent", "syn_recv"),
        CT_ESTABLISHED: ("established",),
        CT_CLOSING: ("fin_wait", "close_wait", "last_ack", "time_wait", "close"),
    },
    "udp": {CT_NEW: ("unreplied",), CT_ESTABLISHED: ("replied",)},
}


def _protocol_ranges(m: object) -> list[tuple[int, int]] | None:
    if m is None:
        return [(0, 255)]
    if isinstance(m, Ternary):
        return _merge((p, p) for p in range(256) if p & m.mask == m.value)
    return None


def _render_acl(direction: str, acl: list[TableEntry], ifs: list[str], problems: list[str]) -> Items:
    """Allow entries of one endpoint → disjoint boxes (iface, proto range, port range) → entry counter.

    Overlapping rules are cut so that each box names the entry a P4 target would
    hit (highest priority, then the smallest key), whose counter then counts it.
    """
    d = "eg" if direction == "egress" else "in"
    peer = "dst_sets" if direction == "egress" else "src_sets"
    by_cond: dict[str, list[tuple[TableEntry, list[tuple[int, int]], tuple[int, int]]]] = {}
    for e in acl:
        m = e.match_of(peer)
        if m is None:
            cond = "any"
        elif isinstance(m, Ternary) and m.value == m.mask and m.mask & (m.mask - 1) == 0 and m.mask:
            cond = f"b{m.mask.bit_length() - 1}"
            if m.mask.bit_length() > SET_BITS:
                problems.append(f"{e.alias}: set bit out of range; rule left out")
                continue
        else:
            problems.append(
                f"{e.alias} {e.origin or e.key}: only single-set matches are supported; rule left out"
            )
            continue
        protos = _protocol_ranges(e.match_of("protocol"))
        pm = e.match_of("dst_port")
        ports = (pm.low, pm.high) if isinstance(pm, Range) else (0, 65535)
        if protos is None:
            problems.append(f"{e.alias}: unsupported protocol match; rule left out")
            continue
        by_cond.setdefault(cond, []).append((e, protos, ports))
    out: Items = {}
    for cond, rules in by_cond.items():
        container = f"acl_{d}_{cond}"
        for box, e in _disjoint_boxes(rules).items():
            (plo, phi), (lo, hi) = box
            for name in ifs:
                out[(container, (name, (plo, phi), (lo, hi)))] = counter_name(e)
        if container not in CONTAINERS:
            problems.append(f"{container}: no such ACL map")
    return out


def _disjoint_boxes(
    rules: list[tuple[TableEntry, list[tuple[int, int]], tuple[int, int]]],
) -> dict[tuple[tuple[int, int], tuple[int, int]], TableEntry]:
    def rank(e: TableEntry) -> tuple[int, str]:
        return (-e.priority, repr(e.key))

    boxes = [(pr, ports, e) for e, prs, ports in rules for pr in prs]
    # Fast path: no overlaps (the usual case) keeps one box per rule.
    ordered = sorted(boxes, key=lambda b: (b[0], b[1]))
    overlap = any(
        a[0][0] <= b[0][1] and b[0][0] <= a[0][1] and a[1][0] <= b[1][1] and b[1][0] <= a[1][1]
        for i, a in enumerate(ordered)
        for b in ordered[i + 1 :]
    )
    if not overlap:
        return {(pr, ports): e for pr, ports, e in boxes}
    pcuts = sorted({c for (lo, hi), _, _ in boxes for c in (lo, hi + 1)})
    out: dict[tuple[tuple[int, int], tuple[int, int]], TableEntry] = {}
    for plo, pnext in itertools.pairwise(pcuts):
        phi = pnext - 1
        live = [(ports, e) for (lo, hi), ports, e in boxes if lo <= plo and phi <= hi]
        if not live:
            continue
        cuts = sorted({c for (lo, hi), _ in live for c in (lo, hi + 1)})
        prev: tuple[int, int, TableEntry] | None = None
        for lo, nxt in itertools.pairwise(cuts):
            cover = [e for (a, b), e in live if a <= lo and nxt - 1 <= b]
            if not cover:
                if prev is not None:
                    out[((plo, phi), (prev[0], prev[1]))] = prev[2]
                    prev = None
                continue
            best = min(cover, key=rank)
            if prev is not None and prev[2] is best and prev[1] + 1 == lo:
                prev = (prev[0], nxt - 1, best)
            else:
                if prev is not None:
                    out[((plo, phi), (prev[0], prev[1]))] = prev[2]
                prev = (lo, nxt - 1, best)
        if prev is not None:
            out[((plo, phi), (prev[0], prev[1]))] = prev[2]
    return out
