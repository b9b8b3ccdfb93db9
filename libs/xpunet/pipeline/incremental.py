"""Incremental lowering: one intent change re-lowers only the groups it touches.  Pure.

:class:`NodeLowering` holds one node's intents keyed by their intent-bucket
key, the output of every group (see :mod:`xpunet.pipeline.lowering`), the
shared allocations and the folded desired entries.  ``set_intent`` /
``set_ports`` record what changed; ``flush`` re-lowers exactly:

* the groups of the intents that changed (an endpoint: its port/anti-spoofing
  group and its rules; a service port; a route; the node's addresses; the
  conntrack timeouts; the node's own ports);
* the services of an override's id;
* the rules of every endpoint whose referenced set got, lost or moved its
  membership bit (:class:`~xpunet.pipeline.alloc.StableIds` keeps bits and
  next-hop ids; only the names that come or go change numbers);
* the IP-set classification prefixes covered by a changed member (added,
  removed, or its set's bit changed) — kept per prefix with a sorted index, not
  recomputed per set.

and returns the keys whose desired entry changed, for the reconciler to diff
against the applied view.  Invariant (checked by a property test): after
``flush``, :meth:`NodeLowering.lowered` equals
``lower(self.node_intents(), ports, allocation=self.allocation())``.
"""

from __future__ import annotations

import bisect
from collections import Counter
from collections.abc import Iterable, Mapping
from typing import TypeVar

from xpunet.ir.keys import node_prefix
from xpunet.ir.lb import ConntrackTimeouts, LbNodeAddresses, LbNodeOverride, LbServicePort
from xpunet.ir.policy import IPSet, PolicyEndpoint
from xpunet.ir.routes import NodeRoute
from xpunet.pipeline.alloc import StableIds
from xpunet.pipeline.entries import EntryKey, Lpm, TableEntry
from xpunet.pipeline.groups import (
    NO_UPLINK,
    SIDES,
    GroupOut,
    NodePorts,
    bad_member_problem,
    classification_entry,
    entry_order,
    fold,
    lower_acl,
    lower_conntrack,
    lower_endpoint,
    lower_host_routes,
    lower_node_addresses,
    lower_node_ports,
    lower_route,
    lower_service,
    member_prefix,
    next_hop_names,
    node_addresses,
    referenced_sets,
    set_problems,
)
from xpunet.pipeline.lowering import (
    NEXT_HOP_SPACE,
    PHASE_ACL,
    PHASE_ADDRESSES,
    PHASE_CLASSIFY,
    PHASE_CONNTRACK,
    PHASE_ENDPOINT,
    PHASE_HOST_ROUTES,
    PHASE_NO_UPLINK,
    PHASE_PORTS,
    PHASE_ROUTE,
    PHASE_SERVICE,
    PHASE_SET,
    Allocation,
    Lowered,
    NodeIntents,
    TableOverflow,
    overflows,
)
from xpunet.pipeline.schema import SCHEMA, SET_BITS, Schema

GroupKey = tuple[object, ...]
K = TypeVar("K")
_INTENT_TYPES = (
    PolicyEndpoint,
    IPSet,
    LbServicePort,
    LbNodeOverride,
    LbNodeAddresses,
    ConntrackTimeouts,
    NodeRoute,
)


class _Merge:
    """Group outputs folded into the desired entries, updated per group (conflicts, shared keys)."""

    def __init__(self) -> None:
        self.groups: dict[GroupKey, GroupOut] = {}
        self.desired: dict[EntryKey, TableEntry] = {}
        self.counts: dict[str, int] = {}
        self.changed: set[EntryKey] = set()
        self.track = True  # collect the keys of new groups in ``changed`` (see NodeLowering.flush)
        self._owner: dict[EntryKey, GroupKey] = {}  # keys one group adds
        self._shared: dict[EntryKey, list[GroupKey]] = {}  # keys several groups add, in group order
        self.conflicts: dict[EntryKey, list[str]] = {}
        self.with_problems: set[GroupKey] = set()

    def replace(self, gk: GroupKey, new: GroupOut | None) -> None:
        """Group ``gk`` now adds ``new`` (None: the group is gone)."""
        old = self.groups.pop(gk, None)
        if new is not None and (new.adds or new.problems):
            self.groups[gk] = new
        else:
            new = None
        if new is not None and new.problems:
            self.with_problems.add(gk)
        else:
            self.with_problems.discard(gk)
        delta = new.delta if new is not None else None
        if new is not None:
            new.delta = None  # drop the reference: outputs must not chain back through history
        if old is None and new is not None and not new.extra:
            self._add_group(gk, new.adds)
            return
        if delta is not None and delta[0] is old and old is not None and new is not None:
            # Every key outside delta[1] holds the very same entry object in old and new,
            # and neither has repeated keys (``extra``), so a key only this group adds is simply set.
            old_adds, new_adds, shared = old.adds, new.adds, self._shared
            for k in delta[1]:
                o = old_adds.get(k)
                e = new_adds.get(k)
                if e is None:
                    if o is not None:
                        self._drop(gk, k)
                elif o is None:
                    self._take(gk, k)
                elif o is not e:
                    if shared and k in shared:
                        self.refresh(k)
                    else:
                        self._set(k, e)
            return
        old_adds = old.adds if old is not None else {}
        new_adds = new.adds if new is not None else {}
        for k in old_adds:
            if k not in new_adds:
                self._drop(gk, k)
        for k, e in new_adds.items():
            o = old_adds.get(k)
            if o is None:
                self._take(gk, k)
            elif (
                o is e
                and not (old is not None and k in old.extra)
                and not (new is not None and k in new.extra)
            ):
                continue
            elif (
                o == e
                and o.origin == e.origin
                and not (old is not None and k in old.extra)
                and not (new is not None and k in new.extra)
                and k not in self._shared
            ):
                self.desired[k] = e  # same entry, kept identical object for the next comparison
            else:
                self.refresh(k)

    def _add_group(self, gk: GroupKey, adds: Mapping[EntryKey, TableEntry]) -> None:
        """A group that was not there adds ``adds`` (no key twice): :meth:`_take` for each key, with
        the lookups of the common case only (a key no other group adds: 3 hashes, not ~12; a node's
        first pass goes through here for every one of its millions of entries)."""
        owner, shared, desired, changed = self._owner, self._shared, self.desired, self.changed
        track = self.track
        per_table: dict[str, int] = {}
        for k, e in adds.items():
            if (shared and k in shared) or owner.setdefault(k, gk) is not gk:
                self._take(gk, k)  # another group adds it too: fold in group order
                continue
            # Nobody added k before (no owner), so it has no desired entry and no conflict yet.
            desired[k] = e
            if track:
                changed.add(k)
            per_table[e.table] = per_table.get(e.table, 0) + 1
        counts = self.counts
        for table, n in per_table.items():
            counts[table] = counts.get(table, 0) + n

    def _take(self, gk: GroupKey, k: EntryKey) -> None:
        other = self._owner.pop(k, None)
        shared = self._shared.get(k)
        if other is None and shared is None:
            self._owner[k] = gk
        elif shared is not None:
            bisect.insort(shared, gk)
        else:
            assert other is not None
            self._shared[k] = sorted([other, gk])
        self.refresh(k)

    def _drop(self, gk: GroupKey, k: EntryKey) -> None:
        shared = self._shared.get(k)
        if shared is not None:
            shared.remove(gk)
            if len(shared) == 1:
                self._owner[k] = shared[0]
                del self._shared[k]
            self.refresh(k)
            return
        self._owner.pop(k, None)
        self.conflicts.pop(k, None)
        gone = self.desired.pop(k, None)
        if gone is not None:
            self.counts[gone.table] -= 1
            self.changed.add(k)

    def _set(self, k: EntryKey, e: TableEntry) -> None:
        """The sole, unrepeated add on ``k`` is now ``e``."""
        desired = self.desired
        before = desired.get(k)
        if before is None:
            self.counts[e.table] = self.counts.get(e.table, 0) + 1
        elif before == e and before.origin == e.origin:
            desired[k] = e
            return
        desired[k] = e
        self.changed.add(k)

    def refresh(self, k: EntryKey) -> None:
        """Fold every add on ``k`` again, in group order."""
        contributors = self._shared.get(k)
        if contributors is None:
            g = self.groups[self._owner[k]]
            seq = g.sequence(k)
        else:
            seq = [e for gk in contributors for e in self.groups[gk].sequence(k)]
        found: list[str] = []
        e = seq[0] if len(seq) == 1 else fold(seq, found)
        if found:
            self.conflicts[k] = found
        else:
            self.conflicts.pop(k, None)
        before = self.desired.get(k)
        if before is None:
            self.counts[e.table] = self.counts.get(e.table, 0) + 1
        elif before == e and before.origin == e.origin:
            self.desired[k] = e
            return
        self.desired[k] = e
        self.changed.add(k)

    def put_one(self, gk: GroupKey, e: TableEntry) -> None:
        """Set one entry of a group maintained in place (the classification)."""
        g = self.groups.get(gk)
        if g is None:
            g = self.groups[gk] = GroupOut(SCHEMA)
        k = e.key
        fresh = k not in g.adds
        g.adds[k] = e
        if fresh:
            self._take(gk, k)
        else:
            self.refresh(k)

    def drop_one(self, gk: GroupKey, k: EntryKey) -> None:
        g = self.groups.get(gk)
        if g is None or g.adds.pop(k, None) is None:
            return
        if not g.adds:
            del self.groups[gk]
        self._drop(gk, k)

    def problems(self) -> list[str]:
        out: list[str] = []
        for gk in sorted(self.with_problems):
            out += self.groups[gk].problems
        for k in sorted(self.conflicts, key=lambda k: entry_order(self.desired[k])):
            out += self.conflicts[k]
        return out


Prefix = tuple[int, Lpm]  # (IP version, prefix)


def _parse_shard(s: IPSet) -> tuple[tuple[Prefix, ...], str | None]:
    """A shard's members as prefixes, and the least member that is not a CIDR (None: all are)."""
    prefixes: list[Prefix] = []
    bad: str | None = None
    for member in s.members:
        prefix = member_prefix(member)
        if prefix is None:
            bad = member if bad is None else min(bad, member)
        else:
            prefixes.append(prefix)
    return tuple(prefixes), bad


class _Classification:
    """One direction's IP-set classification: prefix → bits of every included set covering it.

    A set is included with its bit and its prefixes counted (shards of a set
    may hold the same member for a moment): :meth:`include` replaces a set
    whole, :meth:`delta` applies the members one shard gained and lost, so a
    member change costs the prefixes it touches, not the set's size.
    """

    def __init__(self, side: str, index: int, merge: _Merge, schema: Schema) -> None:
        self.side = side
        self.gk: GroupKey = (PHASE_CLASSIFY, index)
        self.merge = merge
        self.schema = schema
        self.bit_of: dict[str, int] = {}  # included set id → its bit
        self.counts: dict[str, dict[Prefix, int]] = {}  # included set id → prefix → members giving it
        self.sets_of: dict[int, dict[Lpm, set[str]]] = {4: {}, 6: {}}  # prefix → included sets having it
        self.sorted: dict[int, list[tuple[int, int]]] = {4: [], 6: []}  # (value, length) of every prefix
        self.keys: dict[tuple[int, Lpm], EntryKey] = {}
        self.lengths: dict[int, dict[int, int]] = {4: {}, 6: {}}  # prefix length → prefixes of it

    def include(self, set_id: str, now: tuple[int, dict[Prefix, int]] | None) -> None:
        """Set ``set_id``'s contribution (bit and counted prefixes), None: none; re-lowers what it covers."""
        before = (self.bit_of[set_id], self.counts[set_id]) if set_id in self.bit_of else None
        if before == now:
            return
        touched: set[Prefix] = set()
        if before is not None:
            del self.bit_of[set_id], self.counts[set_id]
            for prefix in before[1]:
                touched.add(prefix)
                self._unhold(set_id, prefix)
        if now is not None:
            self.bit_of[set_id] = now[0]
            self.counts[set_id] = dict(now[1])
            for prefix in now[1]:
                touched.add(prefix)
                self._hold(set_id, prefix)
        self._relower_around(touched)

    def delta(self, set_id: str, added: Iterable[Prefix], removed: Iterable[Prefix]) -> None:
        """An included set's members changed (its bit did not): count them in and out."""
        counts = self.counts[set_id]
        touched: set[Prefix] = set()
        for prefix in removed:
            n = counts[prefix] - 1
            if n:
                counts[prefix] = n
                continue
            del counts[prefix]
            touched.add(prefix)
            self._unhold(set_id, prefix)
        for prefix in added:
            n = counts.get(prefix, 0)
            counts[prefix] = n + 1
            if not n:
                touched.add(prefix)
                self._hold(set_id, prefix)
        self._relower_around(touched)

    def _hold(self, set_id: str, prefix: Prefix) -> None:
        version, p = prefix
        holders = self.sets_of[version].get(p)
        if holders is None:
            self.sets_of[version][p] = {set_id}
            self._count(version, p.prefix_len, 1)
            bisect.insort(self.sorted[version], (p.value, p.prefix_len))
        else:
            holders.add(set_id)

    def _unhold(self, set_id: str, prefix: Prefix) -> None:
        version, p = prefix
        holders = self.sets_of[version].get(p)
        if holders is not None:
            holders.discard(set_id)
            if not holders:
                del self.sets_of[version][p]
                self._count(version, p.prefix_len, -1)
                idx = bisect.bisect_left(self.sorted[version], (p.value, p.prefix_len))
                del self.sorted[version][idx]

    def _relower_around(self, touched: set[Prefix]) -> None:
        """Re-lower the touched prefixes and every prefix within them (their covering bits changed)."""
        affected: set[Prefix] = set()
        for version, c in touched:
            affected.add((version, c))
            affected.update((version, p) for p in self._within(version, c))
        for version, p in affected:
            self._relower(version, p)

    def _count(self, version: int, length: int, delta: int) -> None:
        n = self.lengths[version].get(length, 0) + delta
        if n:
            self.lengths[version][length] = n
        else:
            del self.lengths[version][length]

    def _within(self, version: int, c: Lpm) -> set[Lpm]:
        width = 32 if version == 4 else 128
        hi = c.value | ((1 << (width - c.prefix_len)) - 1)
        index = self.sorted[version]
        out: set[Lpm] = set()
        for i in range(bisect.bisect_left(index, (c.value, -1)), len(index)):
            value, length = index[i]
            if value > hi:
                break
            if length >= c.prefix_len:
                out.add(Lpm(value, length))
        return out

    def _covering(self, version: int, p: Lpm) -> int:
        """OR of the bits of every included set with a member covering ``p`` (only lengths in use)."""
        width = 32 if version == 4 else 128
        sets_of, bits = self.sets_of[version], self.bit_of
        acc = 0
        for length in sorted(self.lengths[version]):
            if length > p.prefix_len:
                break
            mask = ((1 << length) - 1) << (width - length)
            for s in sets_of.get(Lpm(p.value & mask, length), ()):
                acc |= 1 << bits[s]
        return acc

    def _relower(self, version: int, p: Lpm) -> None:
        slot = (version, p)
        if p not in self.sets_of[version]:
            k = self.keys.pop(slot, None)
            if k is not None:
                self.merge.drop_one(self.gk, k)
            return
        bits = self._covering(version, p)
        e = classification_entry(self.side, version, p, bits, self.schema)
        self.keys[slot] = e.key
        self.merge.put_one(self.gk, e)


class NodeLowering:
    """One node's lowering, kept up to date one intent at a time."""

    def __init__(self, node: str, ports: NodePorts | None = None, *, schema: Schema = SCHEMA) -> None:
        self.node = node
        self.schema = schema
        self.ports = ports or NodePorts()
        self._prefix = node_prefix(node)
        self.values: dict[str, object] = {}  # intent key → value, only what this node lowers
        self._merge = _Merge()
        self._bits = (StableIds(SET_BITS), StableIds(SET_BITS))
        self._refs: tuple[dict[str, set[str]], dict[str, set[str]]] = ({}, {})  # set id → endpoint keys
        self._ep_refs: dict[str, tuple[frozenset[str], frozenset[str]]] = {}  # programmed endpoint's sets
        self._ep_groups: dict[str, tuple[GroupKey, GroupKey]] = {}
        self._eps_by_ref: dict[str, set[str]] = {}
        self._sets: dict[str, dict[str, IPSet]] = {}  # set id → key → value (the set: their union)
        self._svc_group: dict[str, GroupKey] = {}
        self._svcs_by_id: dict[int, set[str]] = {}
        self._overrides: dict[int, dict[str, LbNodeOverride]] = {}  # the last key wins
        self._route_group: dict[str, GroupKey] = {}
        self._route_used: dict[str, dict[int, str]] = {}
        self._nh = StableIds(NEXT_HOP_SPACE, start=1)
        self._nh_refs: dict[str, set[str]] = {}  # next-hop name → route keys
        self._route_names: dict[str, tuple[str, str]] = {}
        self._classes = tuple(
            _Classification(side, i, self._merge, schema) for i, (side, _, _) in enumerate(SIDES)
        )
        # dirty marks, consumed by flush()
        self._dirty_eps: set[str] = set()
        self._dirty_sets: set[str] = set()  # sets to re-include whole (their bit or users changed)
        self._dirty_shards: dict[str, set[str]] = {}  # set id → keys of its shards that changed
        # (set id, key) → the shard's prefixes and its least bad member, as last classified
        self._parsed: dict[tuple[str, str], tuple[tuple[Prefix, ...], str | None]] = {}
        self._bad: dict[str, dict[str, str]] = {}  # set id → key → the least bad member of that shard
        self._dirty_svcs: set[str] = set()
        self._dirty_routes: set[str] = set()
        self._dirty_singles: set[str] = {"ports", "addresses", "conntrack", "host_routes", "no_uplink"}

    # ------------------------------------------------------------------ input

    @property
    def desired(self) -> Mapping[EntryKey, TableEntry]:
        """The desired entries by key (live: updated by :meth:`flush`)."""
        return self._merge.desired

    def set_intent(self, key: str, value: object | None) -> None:
        """An intent-bucket key now holds ``value`` (None: deleted); lowered at the next flush."""
        if not key.startswith((self._prefix, "global.")):
            return
        if value is not None and not self._mine(value):
            value = None
        old = self.values.get(key)
        if old is value or (old is None and value is None):
            return
        for v in (old, value):
            if v is not None:
                self._mark(key, v)
        if value is None:
            self.values.pop(key, None)
        else:
            self.values[key] = value
        self._index(key, old, value)

    def _mine(self, value: object) -> bool:
        if not isinstance(value, _INTENT_TYPES):
            return False
        if isinstance(value, PolicyEndpoint | LbNodeAddresses):
            return value.node == self.node
        return True

    def _mark(self, key: str, v: object) -> None:
        if isinstance(v, PolicyEndpoint):
            self._dirty_eps.add(key)
        elif isinstance(v, IPSet):
            self._dirty_shards.setdefault(v.id, set()).add(key)
        elif isinstance(v, LbServicePort):
            self._dirty_svcs.add(key)
        elif isinstance(v, LbNodeOverride):
            self._dirty_svcs.update(self._svcs_by_id.get(v.id, ()))
        elif isinstance(v, LbNodeAddresses):
            self._dirty_singles.add("addresses")
        elif isinstance(v, ConntrackTimeouts):
            self._dirty_singles.add("conntrack")
        elif isinstance(v, NodeRoute):
            if v.node == self.node:
                self._dirty_singles.update(("addresses", "host_routes"))
            else:
                self._dirty_routes.add(key)
                self._dirty_singles.add("no_uplink")

    def _index(self, key: str, old: object | None, new: object | None) -> None:
        """Keep the by-id and by-pod indexes of keyed intents."""
        if isinstance(old, PolicyEndpoint):
            _discard(self._eps_by_ref, f"{old.namespace}/{old.pod}", key)
        if isinstance(new, PolicyEndpoint):
            self._eps_by_ref.setdefault(f"{new.namespace}/{new.pod}", set()).add(key)
        if isinstance(old, IPSet):
            held = self._sets.get(old.id, {})
            held.pop(key, None)
            if not held:
                self._sets.pop(old.id, None)
        if isinstance(new, IPSet):
            self._sets.setdefault(new.id, {})[key] = new
        if isinstance(old, LbServicePort):
            _discard(self._svcs_by_id, old.id, key)
        if isinstance(new, LbServicePort):
            self._svcs_by_id.setdefault(new.id, set()).add(key)
        if isinstance(old, LbNodeOverride):
            held_o = self._overrides.get(old.id, {})
            held_o.pop(key, None)
            if not held_o:
                self._overrides.pop(old.id, None)
        if isinstance(new, LbNodeOverride):
            self._overrides.setdefault(new.id, {})[key] = new

    def set_ports(self, ports: NodePorts) -> None:
        """The node's ports changed (a pod attached or detached, host/uplinks reconfigured)."""
        old = self.ports
        if ports == old:
            return
        self.ports = ports
        if (ports.host, ports.uplinks) != (old.host, old.uplinks):
            self._dirty_singles.update(("ports", "host_routes", "no_uplink"))
            if (ports.uplinks[:1], bool(ports.uplinks)) != (old.uplinks[:1], bool(old.uplinks)):
                self._dirty_routes.update(self._route_keys())
        if ports.endpoints != old.endpoints:
            for ref in set(ports.endpoints) | set(old.endpoints):
                if ports.endpoints.get(ref) != old.endpoints.get(ref):
                    self._dirty_eps.update(self._eps_by_ref.get(ref, ()))

    def _route_keys(self) -> list[str]:
        return [k for k, v in self.values.items() if isinstance(v, NodeRoute) and v.node != self.node]

    # ------------------------------------------------------------------ flush

    def flush(self, *, track: bool = True) -> set[EntryKey]:
        """Re-lower what changed since the last flush; returns the entry keys whose desired entry changed.

        ``track=False``: the caller compares every desired key anyway (a node's first pass, a
        reconciliation), so the keys of new groups are not collected (millions of set inserts
        and ~50 bytes per entry at that size): the set returned is then incomplete."""
        merge = self._merge
        merge.changed = set()
        merge.track = track
        bit_changes = self._flush_endpoint_refs()
        self._flush_sets(bit_changes)
        self._flush_endpoints(bit_changes)
        self._flush_services()
        self._flush_singles()
        self._flush_routes()
        changed, merge.changed = merge.changed, set()
        return changed

    def _flush_endpoint_refs(self) -> tuple[set[str], set[str]]:
        """Set references of the changed endpoints → refcounts → bit (re)assignments per side."""
        ref_changes: tuple[set[str], set[str]] = (set(), set())
        for key in self._dirty_eps:
            ep = self.values.get(key)
            refs: tuple[frozenset[str], frozenset[str]] = (frozenset(), frozenset())
            if isinstance(ep, PolicyEndpoint) and f"{ep.namespace}/{ep.pod}" in self.ports.endpoints:
                refs = (frozenset(referenced_sets(ep, "ingress")), frozenset(referenced_sets(ep, "egress")))
            before = self._ep_refs.pop(key, (frozenset(), frozenset()))
            if refs[0] or refs[1]:
                self._ep_refs[key] = refs
            for i in (0, 1):
                for s in before[i] - refs[i]:
                    _discard(self._refs[i], s, key)
                    if s not in self._refs[i]:
                        ref_changes[i].add(s)
                for s in refs[i] - before[i]:
                    if s not in self._refs[i]:
                        ref_changes[i].add(s)
                    self._refs[i].setdefault(s, set()).add(key)
        out: tuple[set[str], set[str]] = (set(), set())
        for i in (0, 1):
            add = {s for s in ref_changes[i] if s in self._refs[i]}
            remove = ref_changes[i] - add
            out[i].update(self._bits[i].update(add=add, remove=remove))
            self._dirty_sets |= ref_changes[i]
            for s in out[i]:
                self._dirty_eps.update(self._refs[i].get(s, ()))  # their rules carry the bit
        return out

    def _flush_sets(self, bit_changes: tuple[set[str], set[str]]) -> None:
        """Re-classify the sets whose shards, bit or users changed.

        A set is the union of its shards (``xpunet.ir.policy``).  Only the
        shards that changed are parsed again; a set whose bit did not change
        is updated with what those shards gained and lost, so a member joining
        a set of 50,000 costs about what it costs in a set of 50.
        """
        whole = self._dirty_sets | bit_changes[0] | bit_changes[1]
        shards, self._dirty_shards = self._dirty_shards, {}
        self._dirty_sets = set()
        for set_id in whole | shards.keys():
            gained: list[Prefix] = []
            lost: list[Prefix] = []
            bad_shards = self._bad.setdefault(set_id, {})
            for key in shards.get(set_id, ()):
                old = self._parsed.pop((set_id, key), None)
                before = Counter(old[0]) if old is not None else Counter()
                bad_shards.pop(key, None)
                value = self.values.get(key)
                if isinstance(value, IPSet) and value.id == set_id:
                    new = self._parsed[set_id, key] = _parse_shard(value)
                    after = Counter(new[0])
                    if new[1] is not None:
                        bad_shards[key] = new[1]
                else:
                    after = Counter()
                # Only what the shard gained and lost: a shard rewritten for one member is one prefix.
                lost.extend((before - after).elements())
                gained.extend((after - before).elements())
            held = self._sets.get(set_id, {})
            bad = min(bad_shards.values()) if bad_shards else None
            if not held:
                del self._bad[set_id]
            g = GroupOut(self.schema)
            if set_id in self._refs[0] or set_id in self._refs[1]:
                if not held:
                    g.problems += set_problems(set_id, None, True)
                elif bad is not None:
                    g.problems.append(bad_member_problem(set_id, bad))
            self._merge.replace((PHASE_SET, set_id), g)
            for i, cls in enumerate(self._classes):
                bit = self._bits[i].assigned.get(set_id)
                if bit is None or not held or bad is not None:
                    cls.include(set_id, None)  # no bit, or no members, or a bad one: matches nothing
                elif set_id not in whole and cls.bit_of.get(set_id) == bit:
                    cls.delta(set_id, gained, lost)
                else:
                    counts: dict[Prefix, int] = {}
                    for key in held:
                        for prefix in self._parsed[set_id, key][0]:
                            counts[prefix] = counts.get(prefix, 0) + 1
                    cls.include(set_id, (bit, counts))

    def _flush_endpoints(self, bit_changes: tuple[set[str], set[str]]) -> None:
        bits = (self._bits[0].assigned, self._bits[1].assigned)
        dirty, self._dirty_eps = self._dirty_eps, set()
        for key in dirty:
            before = self._ep_groups.pop(key, None)
            ep = self.values.get(key)
            if not isinstance(ep, PolicyEndpoint):
                if before is not None:
                    self._merge.replace(before[0], None)
                    self._merge.replace(before[1], None)
                continue
            gk_ep: GroupKey = (PHASE_ENDPOINT, ep.namespace, ep.pod, key)
            gk_acl: GroupKey = (PHASE_ACL, ep.namespace, ep.pod, key)
            if before is not None and before != (gk_ep, gk_acl):
                self._merge.replace(before[0], None)
                self._merge.replace(before[1], None)
            self._ep_groups[key] = (gk_ep, gk_acl)
            port = self.ports.endpoints.get(f"{ep.namespace}/{ep.pod}")
            self._merge.replace(gk_ep, lower_endpoint(ep, port, self.schema))
            acl = lower_acl(ep, port, bits[0], bits[1], self.schema) if port is not None else None
            self._merge.replace(gk_acl, acl)

    def _flush_services(self) -> None:
        dirty, self._dirty_svcs = self._dirty_svcs, set()
        for key in dirty:
            before = self._svc_group.pop(key, None)
            svc = self.values.get(key)
            if not isinstance(svc, LbServicePort):
                if before is not None:
                    self._merge.replace(before, None)
                continue
            gk: GroupKey = (PHASE_SERVICE, svc.id, key)
            if before is not None and before != gk:
                self._merge.replace(before, None)
            self._svc_group[key] = gk
            held = self._overrides.get(svc.id)
            ov = held[max(held)] if held else None
            previous = self._merge.groups.get(gk) if before == gk else None
            self._merge.replace(gk, lower_service(svc, ov, self.schema, previous))

    def _my_routes(self) -> list[NodeRoute]:
        keys = sorted(k for k, v in self.values.items() if isinstance(v, NodeRoute) and v.node == self.node)
        out = [self.values[k] for k in keys]
        return [r for r in out if isinstance(r, NodeRoute)]

    def _single(self, kind: type) -> object | None:
        keys = [k for k, v in self.values.items() if isinstance(v, kind)]
        return self.values[min(keys)] if keys else None

    def _flush_singles(self) -> None:
        dirty, self._dirty_singles = self._dirty_singles, set()
        merge, schema = self._merge, self.schema
        if "ports" in dirty:
            merge.replace((PHASE_PORTS,), lower_node_ports(self.ports, schema))
        if "addresses" in dirty:
            addrs = self._single(LbNodeAddresses)
            assert addrs is None or isinstance(addrs, LbNodeAddresses)
            merge.replace(
                (PHASE_ADDRESSES,),
                lower_node_addresses(node_addresses(self.node, addrs, self._my_routes()), schema),
            )
        if "conntrack" in dirty:
            ct = self._single(ConntrackTimeouts)
            assert ct is None or isinstance(ct, ConntrackTimeouts)
            merge.replace((PHASE_CONNTRACK,), lower_conntrack(ct, schema))
        if "host_routes" in dirty:
            mine = self._my_routes()
            merge.replace(
                (PHASE_HOST_ROUTES,), lower_host_routes(mine[0] if mine else None, self.ports.host, schema)
            )
        if "no_uplink" in dirty:
            g = GroupOut(schema)
            if not self.ports.uplinks and self._route_keys():
                g.problems.append(NO_UPLINK)
            merge.replace((PHASE_NO_UPLINK,), g)

    def _flush_routes(self) -> None:
        dirty, self._dirty_routes = self._dirty_routes, set()
        if not dirty:
            return
        # Next-hop numbers first: a route's group needs its own.
        add: set[str] = set()
        remove: set[str] = set()
        for key in dirty:
            for name in self._route_names.pop(key, ()):
                _discard(self._nh_refs, name, key)
                if name not in self._nh_refs:
                    remove.add(name)
            r = self.values.get(key)
            if isinstance(r, NodeRoute) and r.node != self.node:
                names = next_hop_names(r)
                self._route_names[key] = names
                for name in names:
                    self._nh_refs.setdefault(name, set()).add(key)
                    add.add(name)
                    remove.discard(name)
        moved = self._nh.update(add=add, remove=remove)
        for name in moved:
            dirty.update(self._nh_refs.get(name, ()))
        ids = self._nh.assigned
        for key in dirty:
            before = self._route_group.pop(key, None)
            self._route_used.pop(key, None)
            r = self.values.get(key)
            if not isinstance(r, NodeRoute) or r.node == self.node or not self.ports.uplinks:
                if before is not None:
                    self._merge.replace(before, None)
                continue
            gk: GroupKey = (PHASE_ROUTE, r.node, key)
            if before is not None and before != gk:
                self._merge.replace(before, None)
            self._route_group[key] = gk
            g, used = lower_route(r, ids, self.ports.uplinks[0], self.schema)
            self._route_used[key] = used
            self._merge.replace(gk, g)

    # ----------------------------------------------------------------- output

    def allocation(self) -> Allocation:
        return Allocation(self._bits[0].snapshot(), self._bits[1].snapshot(), self._nh.snapshot())

    def problems(self) -> tuple[str, ...]:
        return tuple(self._merge.problems())

    def overflow(self) -> tuple[TableOverflow, ...]:
        return tuple(overflows(self._merge.counts, self.schema, len(self._refs[0]), len(self._refs[1])))

    def occupancy(self) -> Mapping[str, int]:
        """Desired entries per table name."""
        return {t: n for t, n in self._merge.counts.items() if n}

    def node_intents(self) -> NodeIntents:
        """The intents held, as :func:`~xpunet.pipeline.lowering.node_intents_from_kv` would pick them."""
        by_type: dict[type, list[object]] = {}
        for k in sorted(self.values):
            by_type.setdefault(type(self.values[k]), []).append(self.values[k])

        def of(t: type) -> list[object]:
            return by_type.get(t, [])

        addrs = [a for a in of(LbNodeAddresses) if isinstance(a, LbNodeAddresses)]
        ct = [c for c in of(ConntrackTimeouts) if isinstance(c, ConntrackTimeouts)]
        return NodeIntents(
            node=self.node,
            endpoints=tuple(e for e in of(PolicyEndpoint) if isinstance(e, PolicyEndpoint)),
            ip_sets=tuple(s for s in of(IPSet) if isinstance(s, IPSet)),
            services=tuple(s for s in of(LbServicePort) if isinstance(s, LbServicePort)),
            overrides=tuple(o for o in of(LbNodeOverride) if isinstance(o, LbNodeOverride)),
            addresses=addrs[0] if addrs else None,
            conntrack=ct[0] if ct else None,
            routes=tuple(r for r in of(NodeRoute) if isinstance(r, NodeRoute)),
        )

    def lowered(self) -> Lowered:
        """A full snapshot (sorted entries, problems, allocations): O(entries), for tests and tools."""
        used: dict[int, str] = {}
        for u in self._route_used.values():
            used.update(u)
        endpoints: dict[int, str] = {}
        # In group order, like the reference (two pods given one port: the later one is named).
        for key, _ in sorted(self._ep_groups.items(), key=lambda kv: kv[1][0]):
            ep = self.values[key]
            assert isinstance(ep, PolicyEndpoint)
            ref = f"{ep.namespace}/{ep.pod}"
            port = self.ports.endpoints.get(ref)
            if port is not None:
                endpoints[port] = ref
        return Lowered(
            tuple(sorted(self._merge.desired.values(), key=entry_order)),
            self.overflow(),
            self.problems(),
            dict(self._bits[0].assigned),
            dict(self._bits[1].assigned),
            used,
            endpoints,
        )


def _discard(index: dict[K, set[str]], k: K, key: str) -> None:
    held = index.get(k)
    if held is not None:
        held.discard(key)
        if not held:
            del index[k]
