"""Incremental lowering equals the reference lowering after any sequence of intent changes.

Random sequences of upserts and deletes of every intent kind (endpoints with
rules, IP sets with nested and bad members, services with overrides and
clashing frontends, routes of this and other nodes, addresses, conntrack) and
of port changes are applied to a :class:`NodeLowering`, flushed at random
points, and after each flush:

* its entries (with origins), problems, overflow and allocations equal
  ``lower(node_intents, ports, allocation=<its allocation>)``;
* the keys it reported as changed cover every entry that changed;
* against a *fresh* ``lower()`` (which numbers sets and next hops from
  scratch): equal entries when the allocations happen to agree; otherwise set
  bits / next-hop ids legitimately differ (the incremental one keeps the
  numbers of names that stayed), and the reference interpreter must give the
  same verdict for every probe packet on both entry sets.
"""

from __future__ import annotations

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from xpunet.ir.lb import (
    Backend,
    BackendSet,
    ConntrackTimeouts,
    Family,
    Frontend,
    LbNodeAddresses,
    LbNodeOverride,
    LbServicePort,
)
from xpunet.ir.policy import IPSet, PolicyEndpoint, PolicyRule, PortRange, RuleOrigin
from xpunet.ir.routes import NodeRoute
from xpunet.pipeline.alloc import StableIds
from xpunet.pipeline.entries import EntryKey, TableEntry
from xpunet.pipeline.incremental import NodeLowering
from xpunet.pipeline.interpreter import TCP_SYN, Forward, Packet, Pipeline, ToNode
from xpunet.pipeline.lowering import Lowered, NodePorts, hashed_ids, lower, node_intents_from_kv

NODE = "n1"
PODS = (("a", "p0"), ("a", "p1"), ("b", "p2"), ("b", "p3"))
POD_IPS = ("10.1.0.2", "10.1.0.3", "10.1.0.4", "fd00:1::2", "not-an-ip")
SET_IDS = ("s0", "s69", "s156", "s1", "s68")
MEMBERS = (
    "10.0.0.0/8",
    "10.1.0.0/16",
    "10.1.0.0/24",
    "10.1.0.2/32",
    "10.2.0.0/16",
    "192.168.0.0/24",
    "0.0.0.0/0",
    "fd00::/16",
    "fd00:1::2/128",
    "bogus",
)
FRONT_IPS = ("10.96.0.1", "10.96.0.2", "fd00:96::1")
BACKEND_IPS = ("10.1.0.3", "10.2.0.5", "10.3.0.7", "fd00:1::9")
NODES = ("n1", "n2", "n3")


def rules(direction: str) -> st.SearchStrategy[tuple[PolicyRule, ...]]:
    # Sets 0/69/156 and 1/68 share crc32 % 128: their bits probe, so the numbers depend on
    # the order sets come in, and fresh vs incremental allocations differ.
    rule = st.builds(
        PolicyRule,
        st.builds(
            RuleOrigin, st.just("a"), st.sampled_from(("pa", "pb")), st.just(direction), st.integers(0, 1)
        ),
        st.one_of(st.none(), st.sampled_from(SET_IDS), st.sampled_from(SET_IDS), st.sampled_from(SET_IDS)),
        st.one_of(
            st.none(),
            st.lists(
                st.builds(
                    lambda proto, r: PortRange(proto, *r),
                    st.sampled_from(("TCP", "UDP")),
                    st.sampled_from(((80, 80), (443, 443), (80, 443))),
                ),
                max_size=2,
            ).map(tuple),
        ),
    )
    return st.lists(rule, max_size=4).map(tuple)


@st.composite
def endpoint(draw: st.DrawFn) -> tuple[str, PolicyEndpoint]:
    ns, pod = draw(st.sampled_from(PODS))
    ep = PolicyEndpoint(
        ns,
        pod,
        f"u-{pod}",
        draw(st.sampled_from((NODE, NODE, NODE, "n2"))),
        tuple(draw(st.lists(st.sampled_from(POD_IPS), max_size=2, unique=True))),
        draw(st.booleans()),
        draw(st.booleans()),
        draw(rules("ingress")),
        draw(rules("egress")),
    )
    return f"node.n1.policy.ep.{ns}.{pod}", ep


@st.composite
def ip_set(draw: st.DrawFn) -> tuple[str, IPSet]:
    """One shard of a set, under the node or global. (a set is the union of the shards held;
    shards may overlap, as they do for a moment while a set is re-partitioned)."""
    sid = draw(st.sampled_from(SET_IDS))
    members = tuple(draw(st.lists(st.sampled_from(MEMBERS), max_size=4, unique=True)))
    shard = draw(st.sampled_from((0, 0, 1, 2)))
    place = draw(st.sampled_from(("node.n1.policy.ipset", "node.n1.policy.ipset", "global.policy.ipset")))
    return f"{place}.{sid}.{shard}", IPSet(sid, members, shard, 3)


@st.composite
def backend_set(draw: st.DrawFn) -> BackendSet:
    backends = tuple(
        Backend(ip, 8080) for ip in draw(st.lists(st.sampled_from(BACKEND_IPS), max_size=3, unique=True))
    )
    if not backends:
        return BackendSet((), (), draw(st.sampled_from(("reject", "drop"))))
    size = draw(st.integers(1, 7))
    return BackendSet(backends, tuple(draw(st.integers(0, len(backends) - 1)) for _ in range(size)))


@st.composite
def service(draw: st.DrawFn) -> tuple[str, LbServicePort]:
    name = draw(st.sampled_from(("web", "db", "dns")))
    family: Family = draw(st.sampled_from(("ipv4", "ipv4", "ipv6")))
    fronts = draw(
        st.lists(
            st.one_of(
                st.builds(
                    Frontend, st.just("cluster_ip"), st.sampled_from(FRONT_IPS), st.sampled_from((80, 53))
                ),
                st.builds(Frontend, st.just("node_port"), st.none(), st.sampled_from((30080, 30053))),
            ),
            max_size=2,
        )
    )
    svc = LbServicePort(
        id=draw(st.sampled_from((1, 2, 3))),
        namespace="a",
        service=name,
        family=family,
        protocol=draw(st.sampled_from(("TCP", "UDP"))),
        port=80,
        frontends=tuple(fronts),
        internal=draw(backend_set()),
        external=draw(st.one_of(st.none(), backend_set())),
        external_snat=draw(st.booleans()),
    )
    return f"global.lb.svc.a.{name}.{family}", svc


@st.composite
def override(draw: st.DrawFn) -> tuple[str, LbNodeOverride]:
    sid = draw(st.sampled_from((1, 2, 3)))
    ov = LbNodeOverride(
        sid, draw(st.one_of(st.none(), backend_set())), draw(st.one_of(st.none(), backend_set()))
    )
    return f"node.n1.lb.override.{sid}", ov


@st.composite
def route(draw: st.DrawFn) -> tuple[str, NodeRoute]:
    i = draw(st.integers(0, 2))
    node = NODES[i]
    r = NodeRoute(
        node,
        tuple(
            draw(st.lists(st.sampled_from((f"10.{i + 1}.0.0/24", "10.9.0.0/16", "fd00:9::/64")), max_size=2))
        ),
        tuple(draw(st.lists(st.sampled_from((f"fd00:{i + 1}::/64",)), max_size=1))),
        tuple(
            draw(st.lists(st.sampled_from((f"192.168.0.{i + 1}", f"fc00::{i + 1}")), max_size=2, unique=True))
        ),
        draw(st.sampled_from(("direct", "vxlan"))),
    )
    return f"global.routes.node.{node}", r


singles = st.one_of(
    st.tuples(
        st.just("node.n1.lb.addresses"), st.builds(LbNodeAddresses, st.just(NODE), st.just(("192.168.0.1",)))
    ),
    st.tuples(
        st.just("global.lb.conntrack"),
        st.builds(ConntrackTimeouts, tcp_established=st.sampled_from((100, 86400))),
    ),
)
put = st.one_of(endpoint(), ip_set(), endpoint(), ip_set(), service(), override(), route(), singles)
ports = st.builds(
    NodePorts,
    st.dictionaries(
        st.sampled_from([f"{ns}/{p}" for ns, p in PODS]), st.sampled_from((11, 12, 13, 14, 1)), min_size=2
    ),
    st.sampled_from((1, None)),
    st.sampled_from(((2,), (), (2, 3))),
)
op = st.one_of(
    st.tuples(st.just("put"), put),
    st.tuples(st.just("put"), put),
    st.tuples(st.just("put"), put),
    st.tuples(st.just("del"), put.map(lambda kv: kv[0])),
    st.tuples(st.just("ports"), ports),
    st.tuples(st.just("flush"), st.none()),
)


def snapshot(low: Lowered) -> tuple[object, ...]:
    return (
        [(e, e.origin) for e in low.entries],
        low.problems,
        low.overflow,
        dict(low.src_set_bits),
        dict(low.dst_set_bits),
        dict(low.next_hops),
        dict(low.endpoints),
    )


def probes(ports_: NodePorts) -> list[Packet]:
    srcs = sorted(set(ports_.endpoints.values()) | {ports_.host or 1, *ports_.uplinks})
    dsts = [
        *POD_IPS[:4],
        "10.2.0.5",
        "10.1.0.9",
        "192.168.0.1",
        "10.9.0.1",
        "10.2.0.1",
        "fd00:9::1",
        *FRONT_IPS,
    ]
    out = []
    for port in srcs:
        for src in ("10.1.0.2", "10.1.0.3", "10.2.0.1", "fd00:1::2"):
            for dst in dsts:
                if (":" in src) != (":" in dst):
                    continue
                for dport in (80, 443, 30080):
                    out.append(Packet(port, src, dst, 6, 40000, dport, TCP_SYN))
    return out


def verdicts(entries: tuple[TableEntry, ...], packets: list[Packet]) -> list[object]:
    pipe = Pipeline(entries)
    out: list[object] = []
    for p in packets:
        v = pipe.process(p, now=0.0).verdict
        # Next-hop ids are allocation: compare where the packet goes, not the number.
        out.append(("to", v.via, v.node_addr, v.port, v.vni) if isinstance(v, ToNode) else v)
    return out


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(op, min_size=4, max_size=30))
def test_incremental_lowering_equals_the_reference(ops: list[tuple[str, object]]) -> None:
    nl = NodeLowering(NODE, NodePorts({"a/p0": 11, "a/p1": 12, "b/p2": 13}, host=1, uplinks=(2,)))
    values: dict[str, object] = {}
    ports_ = nl.ports
    before: dict[EntryKey, tuple[TableEntry, str]] = {}
    for kind, arg in [*ops, ("flush", None)]:
        if kind == "put":
            assert isinstance(arg, tuple)
            key, value = arg
            values[key] = value
            nl.set_intent(key, value)
        elif kind == "del":
            assert isinstance(arg, str)
            values.pop(arg, None)
            nl.set_intent(arg, None)
        elif kind == "ports":
            assert isinstance(arg, NodePorts)
            ports_ = arg
            nl.set_ports(arg)
        else:
            changed = nl.flush()
            after = {k: (e, e.origin) for k, e in nl.desired.items()}
            moved = {k for k in before.keys() | after.keys() if before.get(k) != after.get(k)}
            assert moved <= changed
            before = after
            intents = node_intents_from_kv(NODE, values)
            assert nl.node_intents() == intents
            mine = nl.lowered()
            event(f"entries: {'0' if not mine.entries else '<40' if len(mine.entries) < 40 else '40+'}")
            if any("conflicts with" in p for p in mine.problems):
                event("a conflict")
            if any("+" in e.origin for e in mine.entries):
                event("merged origins")
            if mine.src_set_bits or mine.dst_set_bits:
                event("set bits in use")
            assert snapshot(mine) == snapshot(lower(intents, ports_, allocation=nl.allocation()))
            fresh = lower(intents, ports_)
            if (fresh.src_set_bits, fresh.dst_set_bits, fresh.next_hops) == (
                mine.src_set_bits,
                mine.dst_set_bits,
                mine.next_hops,
            ):
                assert snapshot(fresh) == snapshot(mine)
            else:
                event("allocations differ: compared verdicts")
                packets = probes(ports_)
                assert verdicts(mine.entries, packets) == verdicts(fresh.entries, packets)


def test_one_flush_from_empty_equals_a_fresh_lowering() -> None:
    sets = [IPSet(f"s{i}", (f"10.{i}.0.0/16",)) for i in range(40)]
    rule = [PolicyRule(RuleOrigin("a", "p", "ingress", 0), s.id, None) for s in sets]
    ep = PolicyEndpoint("a", "p0", "u", NODE, ("10.1.0.2",), True, False, tuple(rule))
    nl = NodeLowering(NODE, NodePorts({"a/p0": 11}, host=1, uplinks=(2,)))
    values: dict[str, object] = {f"node.n1.policy.ipset.{s.id}": s for s in sets}
    values["node.n1.policy.ep.a.p0"] = ep
    for k, v in values.items():
        nl.set_intent(k, v)
    nl.flush()
    fresh = lower(node_intents_from_kv(NODE, values), nl.ports)
    assert snapshot(nl.lowered()) == snapshot(fresh)


def test_allocations_that_differ_from_a_fresh_lowering_give_the_same_verdicts() -> None:
    def ep(*sets: str) -> PolicyEndpoint:
        rules = tuple(PolicyRule(RuleOrigin("a", "p", "ingress", i), s, None) for i, s in enumerate(sets))
        return PolicyEndpoint("a", "p0", "u", NODE, ("10.1.0.2",), True, False, rules)

    nl = NodeLowering(NODE, NodePorts({"a/p0": 11}, host=1, uplinks=(2,)))
    values: dict[str, object] = {
        "node.n1.policy.ipset.s69": IPSet("s69", ("10.2.0.0/16",)),
        "node.n1.policy.ipset.s0": IPSet("s0", ("10.1.0.0/16", "10.2.0.5/32")),
        "node.n1.policy.ep.a.p0": ep("s69"),
    }
    for k, v in values.items():
        nl.set_intent(k, v)
    nl.flush()
    values["node.n1.policy.ep.a.p0"] = ep("s69", "s0")
    nl.set_intent("node.n1.policy.ep.a.p0", values["node.n1.policy.ep.a.p0"])
    nl.flush()
    mine = nl.lowered()
    fresh = lower(node_intents_from_kv(NODE, values), nl.ports)
    # s69 came first and kept its bit; a fresh lowering numbers in name order.
    assert mine.src_set_bits == {"s69": fresh.src_set_bits["s0"], "s0": fresh.src_set_bits["s69"]}
    assert snapshot(mine) != snapshot(fresh)
    packets = [
        Packet(2, src, "10.1.0.2", 6, 40000, 80, TCP_SYN)
        for src in ("10.2.0.5", "10.2.0.6", "10.1.0.7", "10.3.0.1")
    ]
    got = verdicts(mine.entries, packets)
    assert got == verdicts(fresh.entries, packets)
    assert sum(isinstance(v, Forward) for v in got) == 3  # 10.3.0.1 is in no set: denied


def test_a_service_change_touches_only_its_own_entries() -> None:
    nl = NodeLowering(NODE, NodePorts(host=1, uplinks=(2,)))
    table = tuple(i % 2 for i in range(251))
    for i in range(1, 4):
        svc = LbServicePort(
            i,
            "a",
            f"s{i}",
            "ipv4",
            "TCP",
            80,
            frontends=(Frontend("cluster_ip", f"10.96.0.{i}", 80),),
            internal=BackendSet((Backend("10.1.0.2", 80), Backend("10.1.0.3", 80)), table),
        )
        nl.set_intent(f"global.lb.svc.a.s{i}", svc)
    nl.flush()
    moved = LbServicePort(
        2,
        "a",
        "s2",
        "ipv4",
        "TCP",
        80,
        frontends=(Frontend("cluster_ip", "10.96.0.2", 80),),
        internal=BackendSet((Backend("10.1.0.2", 80), Backend("10.1.0.9", 80)), table),
    )
    nl.set_intent("global.lb.svc.a.s2", moved)
    changed = nl.flush()
    assert len(changed) == 125  # the buckets of the replaced backend, nothing else
    assert {nl.desired[k].param("addr") for k in changed} == {0x0A010009}


def test_stable_ids_keep_assignments_and_hand_freed_numbers_to_waiting_names() -> None:
    ids = StableIds(4)
    assert ids.update(add=["a", "b", "c", "d", "e"]) == {"a", "b", "c", "d"}
    assert dict(ids.assigned) == hashed_ids("abcd", 4)
    assert ids.waiting == {"e"}
    kept = dict(ids.assigned)
    assert ids.update(remove=["b"]) == {"b", "e"}
    assert ids.assigned["e"] == kept["b"]  # the only free number
    assert {n: ids.assigned[n] for n in "acd"} == {n: kept[n] for n in "acd"}
    assert ids.update(add=["a"]) == set()  # already numbered: nothing moves


# Sets used by fixed endpoints on both sides, so their bits stay: shard changes then take the
# per-shard path (_Classification.delta), not a whole re-inclusion.
USERS = (
    (
        "node.n1.policy.ep.a.p0",
        PolicyEndpoint(
            "a",
            "p0",
            "u-p0",
            NODE,
            ("10.1.0.2",),
            True,
            True,
            (PolicyRule(RuleOrigin("a", "pa", "ingress", 0), "s0", None),),
            (PolicyRule(RuleOrigin("a", "pa", "egress", 0), "s1", None),),
        ),
    ),
    (
        "node.n1.policy.ep.a.p1",
        PolicyEndpoint(
            "a",
            "p1",
            "u-p1",
            NODE,
            ("10.1.0.3",),
            True,
            False,
            (PolicyRule(RuleOrigin("a", "pb", "ingress", 0), "s1", None),),
        ),
    ),
)
shard_change = st.tuples(
    st.sampled_from(("s0", "s1")),
    st.sampled_from(("node.n1.policy.ipset", "global.policy.ipset")),
    st.integers(0, 3),
    st.one_of(st.none(), st.lists(st.sampled_from(MEMBERS[:-1] + MEMBERS[:3]), max_size=5, unique=True)),
    st.booleans(),  # flush after it
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(shard_change, min_size=1, max_size=25), st.booleans())
def test_shard_by_shard_set_changes_equal_the_reference(
    changes: list[tuple[str, str, int, list[str] | None, bool]], bogus: bool
) -> None:
    """A set's shards come and go one at a time (members overlapping across shards too)."""
    nl = NodeLowering(NODE, NodePorts({"a/p0": 11, "a/p1": 12}, host=1, uplinks=(2,)))
    values: dict[str, object] = dict(USERS)
    for user_key, user in USERS:
        nl.set_intent(user_key, user)
    nl.flush()
    for i, (sid, place, shard, members, flush) in enumerate(changes):
        key = f"{place}.{sid}.{shard}"
        if members is None:
            values.pop(key, None)
            nl.set_intent(key, None)
        else:
            if bogus and i == len(changes) // 2:
                members = [*members, "bogus"]  # a bad member excludes the set until it goes
            value = IPSet(sid, tuple(members), shard, 4)
            values[key] = value
            nl.set_intent(key, value)
        if flush or i == len(changes) - 1:
            nl.flush()
            intents = node_intents_from_kv(NODE, values)
            mine = nl.lowered()
            assert snapshot(mine) == snapshot(lower(intents, nl.ports, allocation=nl.allocation()))
