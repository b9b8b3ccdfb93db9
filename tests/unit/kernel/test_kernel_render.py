"""Pure parts of the kernel target: LPM → intervals, ACL boxes, incremental rendering, the nft JSON codec."""

from __future__ import annotations

import dataclasses
from typing import cast

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from xpunet.datapath.kernel.codec import CodecError, script
from xpunet.datapath.kernel.lpm import lpm_segments
from xpunet.datapath.kernel.render import (
    AFFINITY_LIVE,
    CHAIN,
    COUNTER,
    CT_TIMEOUT,
    ROUTE,
    Delta,
    KernelState,
)
from xpunet.datapath.kernel.ruleset import (
    AFFINITY_CT_MARK,
    CONTAINERS,
    MARKER_COUNTER,
    affinity_chain_rules,
    bootstrap_script,
    pick_chain_rules,
)
from xpunet.ir.lb import (
    Affinity,
    Backend,
    BackendSet,
    ConntrackTimeouts,
    Frontend,
    LbNodeAddresses,
    LbServicePort,
)
from xpunet.ir.policy import IPSet, PolicyEndpoint, PolicyRule, PortRange, RuleOrigin
from xpunet.ir.routes import NodeRoute
from xpunet.lb.maglev import build_table
from xpunet.pipeline.diff import Update, diff
from xpunet.pipeline.entries import TableEntry
from xpunet.pipeline.lowering import NodeIntents, NodePorts, lower

PORTS = NodePorts({"d/a": 11, "d/b": 12}, host=1, uplinks=(2,))
NAMES = {11: "xv11", 12: "xv12", 2: "up0"}
ORIGIN = RuleOrigin("d", "p", "ingress", 0)


def backends(*ips: str) -> BackendSet:
    bs = tuple(Backend(ip, 8080) for ip in sorted(ips))
    return BackendSet(bs, build_table([b.identity for b in bs], size=13))


def intents(n_backends: int = 3, *, rule_port: int = 80, affinity: bool = False) -> NodeIntents:
    eps = (
        PolicyEndpoint("d", "a", "u1", "n1", ("10.0.1.2", "fd00:1::2")),
        PolicyEndpoint(
            "d",
            "b",
            "u2",
            "n1",
            ("10.0.1.3",),
            ingress_isolated=True,
            ingress=(
                PolicyRule(ORIGIN, "s1", (PortRange("TCP", rule_port, rule_port),)),
                PolicyRule(dataclasses.replace(ORIGIN, index=1), "s2", (PortRange("TCP", 0, 65535),)),
            ),
        ),
    )
    sets = (IPSet("s1", ("10.0.0.0/16", "fd00::/16")), IPSet("s2", ("10.0.1.0/24",)))
    svc = LbServicePort(
        7,
        "d",
        "web",
        "ipv4",
        "TCP",
        80,
        frontends=(Frontend("cluster_ip", "10.96.0.7", 80), Frontend("node_port", None, 30007)),
        internal=backends(*(f"10.0.1.{10 + i}" for i in range(n_backends))),
        affinity=Affinity(60) if affinity else None,
    )
    routes = (
        NodeRoute("n1", ("10.0.1.0/24",), (), ("192.168.0.1",)),
        NodeRoute("n2", ("10.0.2.0/24",), (), ("192.168.0.2",)),
    )
    return NodeIntents("n1", eps, sets, (svc,), routes=routes)


def entries(**kw: object) -> tuple[TableEntry, ...]:
    low = lower(intents(**kw), PORTS)  # type: ignore[arg-type]  # keyword test knobs
    assert low.problems == ()
    return low.entries


def fresh(es: tuple[TableEntry, ...]) -> KernelState:
    s = KernelState(NAMES)
    s.replace_all(es)
    return s


def test_lpm_segments_follow_longest_prefix() -> None:
    segs = lpm_segments({(0, 0): 1, (0x80, 1): 2, (0xC0, 2): 3}, 8)
    assert segs == [(0, 0x7F, 1), (0x80, 0xBF, 2), (0xC0, 0xFF, 3)]


@settings(max_examples=60, deadline=None)
@given(st.dictionaries(st.tuples(st.integers(0, 255), st.integers(0, 8)), st.integers(1, 7), max_size=8))
def test_lpm_segments_equal_brute_force(raw: dict[tuple[int, int], int]) -> None:
    prefixes = {((v >> (8 - p)) << (8 - p) if p else 0, p): b for (v, p), b in raw.items()}
    covered = {}
    for addr in range(256):
        best = max((p for (n, p) in prefixes if addr >> (8 - p) == n >> (8 - p)), default=None)
        if best is not None:
            net = (addr >> (8 - best)) << (8 - best) if best else 0
            covered[addr] = prefixes[(net, best)]
    got = {a: v for lo, hi, v in lpm_segments(prefixes, 8) for a in range(lo, hi + 1)}
    assert got == covered


def test_render_from_lowered_intents() -> None:
    items = fresh(entries()).items()
    assert items[("port_kind", ("xv11",))] == "goto:from_pod"
    assert items[("port_kind", ("up0",))] == "goto:svc_check"
    assert ("ep_src4", ("xv11", 0x0A000102)) in items
    assert items[(ROUTE, (4, 0x0A000103, 32))] == (None, "xv12")
    assert items[(ROUTE, (4, 0x0A000200, 24))] == (0xC0A80002, "up0")
    slots = sorted(cast(int, k[1][2]) for k in items if k[0] == "fe_be4_tcp")
    assert slots == [0, 1, 2]
    assert items[("fe_pick4", (0x0A600007, 6, 80))] == "goto:fe4_h3"
    assert items[("np_pick4", (6, 30007))] == "goto:np4_h3"
    assert (CHAIN, ("fe4_h3",)) in items
    assert len([k for k in items if k[0] == "np_be4_tcp"]) == 3
    acl = [k for k in items if k[0].startswith("acl_in_b")]
    assert len(acl) == 2
    assert all(k[1][0] == "xv12" for k in acl)
    assert len([k for k in items if k[0] == COUNTER]) == 5  # b: 2 ingress rules + open egress; a: open both


def test_affinity_frontends_mark_their_group_and_learn_with_the_intent_timeout() -> None:
    items = fresh(entries(affinity=True)).items()
    assert items[("fe_pick4", (0x0A600007, 6, 80))] == "goto:fe4_a3"
    group = 7 * 2  # service port 7, internal set
    # ClusterIP and NodePort of the service port share the group, so a client's entry.
    # (The NodePort's SNAT bit is or-ed into the mark later and masked out of the key.)
    assert items[("fe_aff4", (0x0A600007, 6, 80))] == AFFINITY_CT_MARK | group
    assert items[("np_aff4", (6, 30007))] == AFFINITY_CT_MARK | group
    assert items[("aff_rec", (group,))] == "goto:aff_t60"
    assert (CHAIN, ("aff_t60",)) in items
    live = cast(tuple[tuple[int, int], ...], items[(AFFINITY_LIVE, (4, group))])
    assert [a for a, _ in live] == [0x0A00010A, 0x0A00010B, 0x0A00010C]
    assert not any(k[0] in ("fe_aff4", "aff_rec") for k in fresh(entries()).items())


def test_affinity_rules_remember_then_hash_then_learn() -> None:
    pick = pick_chain_rules("fe6_a2")
    # The key: the mark without the SNAT bit (affinity bit and group) and the client.
    key6 = "ct mark and 0x41ffffff . jhash ip6 saddr mod 0xffffffff seed 0x78707531"
    assert pick[0] == f"meta l4proto tcp dnat ip6 to {key6} map @aff6 : {key6} map @aff6p"
    assert "mod 2 seed" in pick[-1]
    learn = affinity_chain_rules("aff_t10800")
    key4 = "ct mark and 0x41ffffff . ip saddr"
    assert f"update @aff4 {{ {key4} timeout 10800s : ip daddr }}" in learn[0]
    assert f"update @aff4p {{ {key4} timeout 10800s : tcp dport }}" in learn[0]
    assert script(Delta(add={(AFFINITY_LIVE, (4, 14)): ()})) == ""  # not a kernel object


def test_conntrack_timeouts_become_policies_per_protocol_and_family() -> None:
    items = fresh(entries()).items()
    policies = {cast(str, k[1][0]): v for k, v in items.items() if k[0] == CT_TIMEOUT}
    assert sorted(n[:10] for n in policies) == ["ctto_tcp4_", "ctto_tcp6_", "ctto_udp4_", "ctto_udp6_"]
    tcp = dict(cast(tuple[tuple[str, int], ...], next(v for n, v in policies.items() if "tcp4" in n)))
    ct = ConntrackTimeouts()
    assert tcp["syn_sent"] == ct.tcp_syn_sent
    assert tcp["established"] == ct.tcp_established
    assert tcp["time_wait"] == tcp["close"] == ct.tcp_time_wait  # the pipeline's "closing"
    udp = dict(cast(tuple[tuple[str, int], ...], next(v for n, v in policies.items() if "udp6" in n)))
    assert udp == {"unreplied": ct.udp, "replied": ct.udp_stream}
    name = next(n for n in policies if "tcp4" in n)
    assert items[("ct_to", (2, 6))] == f"goto:{name}"
    assert (CHAIN, (name,)) in items
    text = script(Delta(add=items))
    assert f"add ct timeout inet xpunet {name} {{ protocol tcp; l3proto ip; policy = {{ " in text
    assert f'add rule inet xpunet {name} ct timeout set "{name}"' in text


def test_a_timeout_change_replaces_only_that_protocols_policies() -> None:
    def with_ct(ct: ConntrackTimeouts) -> tuple[TableEntry, ...]:
        low = lower(dataclasses.replace(intents(), conntrack=ct), PORTS)
        return low.entries

    s = fresh(with_ct(ConntrackTimeouts()))
    delta = s.update(diff(with_ct(ConntrackTimeouts()), with_ct(ConntrackTimeouts(udp=5))).updates)
    assert {k[0] for k in delta.add} == {CT_TIMEOUT, CHAIN, "ct_to"}
    assert all("udp" in str(k[1][0]) for k in delta.add if k[0] != "ct_to")
    assert len(delta.add) == 2 + 2 + 2  # IPv4 and IPv6: policy, chain, map element


def test_overlapping_rules_are_cut_into_disjoint_boxes() -> None:
    items = fresh(entries()).items()
    # s1 (10.0.0.0/16) allows port 80, s2 (10.0.1.0/24) every TCP port: different bits, no cut needed.
    boxes = sorted(k[1][1:] for k in items if k[0].startswith("acl_in_b"))
    assert ((6, 6), (0, 65535)) in boxes
    assert ((6, 6), (80, 80)) in boxes


def test_one_backend_change_touches_one_frontend_share_set() -> None:
    s = fresh(entries())
    delta = s.update(diff(entries(), entries(n_backends=4)).updates)
    changed = {k[0] for k in (*delta.add, *delta.delete)}
    assert changed == {"fe_be4_tcp", "np_be4_tcp", "fe_pick4", "np_pick4", "@chain"}
    assert len(delta.add) == 2 + 2 + 2  # a 4th slot per frontend, repointed picks, two new K=4 chains


def test_no_change_renders_no_delta_and_rollback_restores() -> None:
    s = fresh(entries())
    before = s.items()
    assert not s.update(Update("INSERT", e) for e in entries())
    new = entries(rule_port=81)
    olds = {e.key: e for e in entries()}
    batch = diff(entries(), new)
    s.update(batch.updates)
    undo = [
        Update("INSERT", olds[u.entry.key]) if u.entry.key in olds else Update("DELETE", u.entry)
        for u in batch.updates
    ]
    s.update(undo)
    assert s.items() == before


STEP = st.tuples(st.integers(1, 4), st.sampled_from([80, 81]), st.booleans())


@settings(max_examples=25, deadline=None)
@given(st.lists(STEP, min_size=1, max_size=5))
def test_incremental_equals_full_render(steps: list[tuple[int, int, bool]]) -> None:
    s = KernelState(NAMES)
    prev: tuple[TableEntry, ...] = ()
    for n, port, aff in steps:
        cur = entries(n_backends=n, rule_port=port, affinity=aff)
        s.update(diff(prev, cur).updates)
        prev = cur
    assert s.items() == fresh(prev).items()


def test_script_writes_elements_in_native_syntax() -> None:
    text = script(Delta(add=fresh(entries()).items()))
    lines = text.splitlines()
    be = next(x for x in lines if x.startswith("add element inet xpunet fe_be4_tcp "))
    assert "10.96.0.7 . 80 . 0 : 10.0.1.10 . 8080" in be
    assert '"up0" : goto svc_check' in next(x for x in lines if " port_kind " in x)
    src = next(x for x in lines if x.startswith("add element inet xpunet src4_b"))
    assert "10.0.0.0-10.0.0.255" in src or "10.0.0.0-10.0.255.255" in src
    assert "fd00::-fd00:ffff:ffff:ffff:ffff:ffff:ffff:ffff" in text
    acl = next(x for x in lines if x.startswith("add element inet xpunet acl_in_b"))
    assert '"xv12" . 6 . 80 : "acl_' in acl
    assert "@route" not in text


def test_script_creates_chains_and_counters_first_and_deletes_them_last() -> None:
    s = fresh(())
    added = script(s.update(diff((), entries()).updates)).splitlines()
    first_element = next(i for i, x in enumerate(added) if " element " in x)
    first_chain = next(i for i, x in enumerate(added) if x.startswith("add chain "))
    # Timeout policies first (a chain's rule names its policy), then chains, counters, elements.
    assert all(x.startswith("add ct timeout inet xpunet ctto_") for x in added[:first_chain])
    assert first_chain == 4  # tcp and udp, IPv4 and IPv6
    assert first_chain < added.index("add chain inet xpunet fe4_h3") < first_element
    assert any(x.startswith("add counter inet xpunet acl_") for x in added[:first_element])
    removed = script(s.update(diff(entries(), ()).updates)).splitlines()
    assert not any(x.startswith("add ") for x in removed)
    assert removed[-1].startswith("delete ct timeout inet xpunet ctto_")
    last_element = max(i for i, x in enumerate(removed) if " element " in x)
    assert all(
        x.startswith(("delete counter", "delete chain", "delete ct timeout"))
        for x in removed[last_element + 1 :]
    )
    assert script(Delta()) == ""


def test_script_refuses_a_name_it_cannot_quote() -> None:
    with pytest.raises(CodecError, match="cannot be written"):
        script(Delta(add={("pod_ifs", ('bad"name',)): None}))


def test_bootstrap_script_is_idempotent_in_shape() -> None:
    first = bootstrap_script(existing_containers={}, existing_counters=frozenset())
    again = bootstrap_script(
        existing_containers={c.name: c.kind for c in CONTAINERS.values()},
        existing_counters=frozenset({MARKER_COUNTER, "ruleset_old"}),
    )
    assert "add map inet xpunet fe_be4_tcp" in first
    assert "fe_pick4" in first
    assert "add map" not in again
    assert "delete counter inet xpunet ruleset_old" in again
    assert "flush table" not in first + again


def test_a_frontend_on_a_node_address_shadows_nodeports_and_follows_the_address() -> None:
    def lowered(node_addrs: tuple[str, ...]) -> tuple[TableEntry, ...]:
        svc = LbServicePort(
            8,
            "d",
            "ext",
            "ipv4",
            "TCP",
            30007,
            frontends=(Frontend("external_ip", "192.168.0.9", 30007),),
            internal=backends("10.0.1.10"),
        )
        base = intents()
        low = lower(
            dataclasses.replace(
                base, services=(*base.services, svc), addresses=LbNodeAddresses("n1", node_addrs)
            ),
            PORTS,
        )
        assert low.problems == ()
        return low.entries

    shadow = ("np_shadow4", (0xC0A80009, 6, 30007))
    s = fresh(lowered(("192.168.0.2",)))
    assert shadow not in s.items()
    # The node gains that address: the frontend re-renders with the pipeline's precedence.
    delta = s.update(diff(lowered(("192.168.0.2",)), lowered(("192.168.0.2", "192.168.0.9"))).updates)
    assert shadow in delta.add
    assert s.items() == fresh(lowered(("192.168.0.2", "192.168.0.9"))).items()
    delta = s.update(diff(lowered(("192.168.0.2", "192.168.0.9")), lowered(("192.168.0.2",))).updates)
    assert shadow in delta.delete
