"""IP set definitions and the selector index that keeps their members current.  Pure.

A *set definition* (``SetDef``) is what a NetworkPolicy rule's peer list means,
independent of the policy it appears in: a union of pod atoms (namespace scope
+ pod selector) and ipBlocks, optionally restricted to pods exposing a named
port (egress named ports).  Identical definitions in different policies are
one set with one content-derived id.

``MembershipIndex`` answers "which pods are in which set" incrementally.  Atoms
are indexed by namespace and by one ``label=value`` pair their pod selector
requires (its *guard*), so a pod change looks at the few atoms that could
match it, not at every selector in the cluster.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from xpunet.model.objects import IPBlock, Labels, LabelSelector, Pod, Protocol
from xpunet.policy.members import CidrEntry, CidrList, cidr_entry, host_entry
from xpunet.policy.selectors import (
    block_cidrs,
    ip_in_block,
    named_port_number,
    selector_matches,
)

PodKey = tuple[str, str]  # (namespace, name)
Guard = tuple[str, str] | None
ALL = LabelSelector()


@dataclass(frozen=True, slots=True)
class PodAtom:
    """Pods in ``namespace`` (or in namespaces matching ``namespace_selector``) matching ``pod_selector``."""

    namespace: str | None
    namespace_selector: LabelSelector | None
    pod_selector: LabelSelector

    @property
    def guard(self) -> Guard:
        # One label every matching pod must carry; None when the selector requires none.
        for item in self.pod_selector.match_labels.items():
            return item
        return None


@dataclass(frozen=True, slots=True)
class SetDef:
    atoms: tuple[PodAtom, ...]  # sorted by repr, deduplicated
    blocks: tuple[IPBlock, ...]  # sorted by repr, deduplicated
    named: tuple[str, Protocol] | None = None  # restrict to pods with this named port

    @property
    def id(self) -> str:
        return set_id_of(self)


_ID_CACHE: dict[SetDef, str] = {}


def set_id_of(definition: SetDef, number: int | None = None) -> str:
    """A content hash of the definition (and named-port number): stable across processes."""
    base = _ID_CACHE.get(definition)
    if base is None:
        text = repr((definition.atoms, definition.blocks, definition.named))
        base = hashlib.blake2b(text.encode(), digest_size=8).hexdigest()
        if len(_ID_CACHE) > 100_000:
            _ID_CACHE.clear()
        _ID_CACHE[definition] = base
    if number is None:
        return base
    return hashlib.blake2b(f"{base}:{number}".encode(), digest_size=8).hexdigest()


def make_setdef(
    atoms: Iterable[PodAtom], blocks: Iterable[IPBlock], named: tuple[str, Protocol] | None = None
) -> SetDef:
    return SetDef(
        atoms=tuple(sorted(set(atoms), key=repr)),
        blocks=tuple(sorted(set(blocks), key=repr)),
        named=named,
    )


# A pod's membership in a set: its IPs in the set (and, for named sets, the port number).
Membership = tuple[int | None, tuple[str, ...]]


@dataclass(slots=True)
class SetState:
    definition: SetDef
    id: str
    refs: int = 0
    members: dict[PodKey, Membership] = field(default_factory=dict)
    by_number: dict[int, set[PodKey]] = field(default_factory=dict)  # named sets only
    block_entries: tuple[CidrEntry, ...] = ()
    has_named_block: bool = False
    # Output member lists (None: every member and the blocks; n: members with named port number n),
    # built when first asked for and kept current by membership changes from then on.
    outputs: dict[int | None, CidrList] = field(default_factory=dict)

    def numbers(self) -> tuple[int, ...]:
        return tuple(sorted(self.by_number))

    def output(self, number: int | None) -> CidrList:
        """The CIDRs of output ``number`` (read as sorted shards), kept current from now on."""
        out = self.outputs.get(number)
        if out is None:
            out = self.outputs[number] = CidrList(self._entries(number))
        return out

    def _entries(self, number: int | None) -> Iterator[CidrEntry]:
        if number is None:
            yield from self.block_entries
            keys: Iterable[PodKey] = self.members
        else:
            keys = self.by_number.get(number, ())
        for key in keys:
            for ip in self.members[key][1]:
                yield host_entry(ip)

    def track(self, old: Membership | None, new: Membership | None) -> None:
        """Apply one pod's membership change to the output lists built so far."""
        for membership, adding in ((old, False), (new, True)):
            if membership is None:
                continue
            number, ips = membership
            for out_number in (None, number) if number is not None else (None,):
                out = self.outputs.get(out_number)
                if out is None:
                    continue
                for ip in ips:
                    if adding:
                        out.add(host_entry(ip))
                    else:
                        out.remove(host_entry(ip))


@dataclass(slots=True)
class _AtomState:
    atom: PodAtom
    sets: set[str] = field(default_factory=set)


class MembershipIndex:
    """Sets, their atoms, and which pods belong to which set.

    Callers register sets (``add_set``/``release_set``), then report pods
    (``update_pod``) and namespace label changes; each call returns the ids of
    sets whose members changed, and of named sets whose number list changed.
    """

    def __init__(self) -> None:
        self.sets: dict[str, SetState] = {}
        self._atoms: dict[PodAtom, _AtomState] = {}
        # namespace -> guard -> atoms with that fixed namespace
        self._fixed: dict[str, dict[Guard, set[PodAtom]]] = {}
        self._nssel_atoms: set[PodAtom] = set()
        # namespace -> guard -> namespace-selector atoms matching that namespace
        self._nssel_by_ns: dict[str, dict[Guard, set[PodAtom]]] = {}
        self._ns_labels: dict[str, Labels] = {}
        self._named_block_sets: set[str] = set()
        self._pod_sets: dict[PodKey, dict[str, Membership]] = {}
        # The pods the index has been told about, by namespace and by label pair.
        self._pods: dict[str, dict[str, Pod]] = {}
        self._by_label: dict[str, dict[tuple[str, str], set[str]]] = {}
        # namespace selector -> namespaces it matches (cleared on any namespace label change)
        self._nssel_cache: dict[LabelSelector, tuple[str, ...]] = {}

    # --- namespaces ---------------------------------------------------------

    def set_namespace_labels(self, name: str, labels: Labels) -> bool:
        """Record a namespace's labels; True if atoms matching it changed (its pods need a rescan)."""
        if self._ns_labels.get(name) == labels:
            return False
        self._ns_labels[name] = labels
        self._nssel_cache.clear()
        before = self._nssel_by_ns.get(name)
        index: dict[Guard, set[PodAtom]] = {}
        for atom in self._nssel_atoms:
            assert atom.namespace_selector is not None
            if selector_matches(atom.namespace_selector, labels):
                index.setdefault(atom.guard, set()).add(atom)
        self._nssel_by_ns[name] = index
        return before != index

    def namespace_labels(self, name: str) -> Labels | None:
        return self._ns_labels.get(name)

    # --- sets ---------------------------------------------------------------

    def add_set(self, definition: SetDef) -> str:
        """Reference a set; a new one is filled from the pods the index knows."""
        sid = set_id_of(definition)
        state = self.sets.get(sid)
        if state is not None:
            state.refs += 1
            return sid
        state = SetState(definition=definition, id=sid, refs=1)
        if definition.named is None:
            cidrs: set[str] = set()
            for block in definition.blocks:
                cidrs.update(block_cidrs(block))
            state.block_entries = tuple(sorted(cidr_entry(c) for c in cidrs))
        else:
            state.has_named_block = bool(definition.blocks)
            if state.has_named_block:
                self._named_block_sets.add(sid)
        self.sets[sid] = state
        for atom in definition.atoms:
            self._ref_atom(atom, sid)
        for pod in self._candidate_pods(definition):
            self._set_membership(state, pod, self._membership(state, pod))
        return sid

    def namespaces_matching(self, selector: LabelSelector) -> tuple[str, ...]:
        found = self._nssel_cache.get(selector)
        if found is None:
            found = tuple(ns for ns, labels in self._ns_labels.items() if selector_matches(selector, labels))
            self._nssel_cache[selector] = found
        return found

    def _candidate_pods(self, definition: SetDef) -> Iterable[Pod]:
        if definition.named is not None and definition.blocks:
            for pods in self._pods.values():
                yield from pods.values()
            return
        seen: set[PodKey] = set()
        for atom in definition.atoms:
            if atom.namespace is not None:
                namespaces: tuple[str, ...] = (atom.namespace,)
            else:
                assert atom.namespace_selector is not None
                namespaces = self.namespaces_matching(atom.namespace_selector)
            guard = atom.guard
            for ns in namespaces:
                in_ns = self._pods.get(ns)
                if not in_ns:
                    continue
                names: Iterable[str] = in_ns if guard is None else self._by_label[ns].get(guard, ())
                for name in names:
                    if (ns, name) not in seen:
                        seen.add((ns, name))
                        yield in_ns[name]

    def release_set(self, sid: str) -> None:
        state = self.sets[sid]
        state.refs -= 1
        if state.refs > 0:
            return
        del self.sets[sid]
        self._named_block_sets.discard(sid)
        for atom in state.definition.atoms:
            self._unref_atom(atom, sid)
        for key in state.members:
            pod_sets = self._pod_sets.get(key)
            if pod_sets is not None:
                pod_sets.pop(sid, None)

    def _ref_atom(self, atom: PodAtom, sid: str) -> None:
        st = self._atoms.get(atom)
        if st is None:
            st = self._atoms[atom] = _AtomState(atom)
            if atom.namespace is not None:
                self._fixed.setdefault(atom.namespace, {}).setdefault(atom.guard, set()).add(atom)
            else:
                assert atom.namespace_selector is not None
                self._nssel_atoms.add(atom)
                for ns in self.namespaces_matching(atom.namespace_selector):
                    self._nssel_by_ns.setdefault(ns, {}).setdefault(atom.guard, set()).add(atom)
        st.sets.add(sid)

    def _unref_atom(self, atom: PodAtom, sid: str) -> None:
        st = self._atoms[atom]
        st.sets.discard(sid)
        if st.sets:
            return
        del self._atoms[atom]
        if atom.namespace is not None:
            _discard(self._fixed, atom.namespace, atom.guard, atom)
        else:
            self._nssel_atoms.discard(atom)
            for ns in list(self._nssel_by_ns):
                _discard(self._nssel_by_ns, ns, atom.guard, atom)

    # --- pods ---------------------------------------------------------------

    def atom_matches(self, atom: PodAtom, pod: Pod) -> bool:
        if atom.namespace is not None:
            if atom.namespace != pod.namespace:
                return False
        else:
            labels = self._ns_labels.get(pod.namespace)
            assert atom.namespace_selector is not None
            if labels is None or not selector_matches(atom.namespace_selector, labels):
                return False
        return selector_matches(atom.pod_selector, pod.labels)

    def _membership(self, state: SetState, pod: Pod) -> Membership | None:
        definition = state.definition
        ips: tuple[str, ...] | None = None
        if any(self.atom_matches(a, pod) for a in definition.atoms):
            ips = pod.ips
        elif state.has_named_block:
            inside = tuple(ip for ip in pod.ips if any(ip_in_block(ip, b) for b in definition.blocks))
            ips = inside or None
        if ips is None:
            return None
        if definition.named is None:
            return (None, ips)
        number = named_port_number(pod, definition.named[0], definition.named[1])
        return None if number is None else (number, ips)

    def candidate_sets(self, pod: Pod) -> set[str]:
        """Sets the pod may be in: via atoms indexed for its namespace and labels."""
        out: set[str] = set(self._named_block_sets)
        guards: list[Guard] = [None, *pod.labels.items()]
        for table in (self._fixed.get(pod.namespace), self._nssel_by_ns.get(pod.namespace)):
            if not table:
                continue
            for guard in guards:
                for atom in table.get(guard, ()):
                    if selector_matches(atom.pod_selector, pod.labels):
                        out.update(self._atoms[atom].sets)
        return out

    def update_pod(self, key: PodKey, pod: Pod | None) -> tuple[set[str], set[str]]:
        """Re-evaluate one pod (None: gone).

        Returns (sets whose members changed, named sets whose number list changed).
        """
        self._store_pod(key, pod)
        old = self._pod_sets.get(key, {})
        candidates = set(old)
        if pod is not None:
            candidates |= self.candidate_sets(pod)
        changed: set[str] = set()
        renumbered: set[str] = set()
        for sid in candidates:
            state = self.sets.get(sid)
            if state is None:
                continue
            new = self._membership(state, pod) if pod is not None else None
            result = self._set_membership_key(state, key, new)
            if result:
                changed.add(sid)
                if result == 2:
                    renumbered.add(sid)
        return changed, renumbered

    def _store_pod(self, key: PodKey, pod: Pod | None) -> None:
        ns, name = key
        pods = self._pods.setdefault(ns, {})
        by_label = self._by_label.setdefault(ns, {})
        old = pods.pop(name, None)
        if old is not None:
            for item in old.labels.items():
                names = by_label[item]
                names.discard(name)
                if not names:
                    del by_label[item]
        if pod is not None:
            pods[name] = pod
            for item in pod.labels.items():
                by_label.setdefault(item, set()).add(name)

    def pods_in(self, namespace: str) -> tuple[PodKey, ...]:
        return tuple((namespace, name) for name in self._pods.get(namespace, ()))

    def _set_membership(self, state: SetState, pod: Pod, value: Membership | None) -> int:
        return self._set_membership_key(state, (pod.namespace, pod.name), value)

    def _set_membership_key(self, state: SetState, key: PodKey, value: Membership | None) -> int:
        """0: unchanged, 1: members changed, 2: a named set's number list changed too."""
        old = state.members.get(key)
        if old == value:
            return 0
        state.track(old, value)
        renumbered = False
        if old is not None:
            del state.members[key]
            self._pod_sets[key].pop(state.id, None)
            if not self._pod_sets[key]:
                del self._pod_sets[key]
            if old[0] is not None:
                bucket = state.by_number[old[0]]
                bucket.discard(key)
                if not bucket:
                    del state.by_number[old[0]]
                    state.outputs.pop(old[0], None)  # empty now; rebuilt if the number comes back
                    renumbered = True
        if value is not None:
            state.members[key] = value
            self._pod_sets.setdefault(key, {})[state.id] = value
            if value[0] is not None:
                if value[0] not in state.by_number:
                    state.by_number[value[0]] = set()
                    renumbered = True
                state.by_number[value[0]].add(key)
        return 2 if renumbered else 1

    def sets_of_pod(self, key: PodKey) -> dict[str, Membership]:
        return self._pod_sets.get(key, {})


def _discard(table: dict[str, dict[Guard, set[PodAtom]]], ns: str, guard: Guard, atom: PodAtom) -> None:
    by_guard = table.get(ns)
    if by_guard is None:
        return
    atoms = by_guard.get(guard)
    if atoms is None:
        return
    atoms.discard(atom)
    if not atoms:
        del by_guard[guard]
        if not by_guard:
            del table[ns]
