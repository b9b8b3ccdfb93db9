"""externalTrafficPolicy Local in the kernel ruleset: local pods use the internal group (pure rendering).

``FLAG_LOCAL_PODS_USE_INTERNAL`` on an external frontend (NodePort, externalIP,
LoadBalancer) means: pods of this node pick among the service's internal
backends, everyone else among the frontend's own (node-local) ones.  These
tests check the items the frontend renders and the static rules that consult
them; the real-packet test is tests/integration/kernel/test_kernel_local_policy.py.
"""

from __future__ import annotations

from typing import cast

from hypothesis import given, settings
from hypothesis import strategies as st

from xpunet.datapath.kernel.render import AFFINITY_LIVE, CHAIN, KernelState
from xpunet.datapath.kernel.ruleset import (
    AFFINITY_CT_MARK,
    CHAINS,
    INTERNAL_SLOT_OFFSET,
    dynamic_chain_rules,
    is_dynamic_chain,
    pick_chain_rules,
)
from xpunet.ir.lb import Affinity, Backend, BackendSet, Frontend, LbNodeAddresses, LbServicePort
from xpunet.ir.policy import PolicyEndpoint
from xpunet.lb.maglev import build_table
from xpunet.pipeline.diff import diff
from xpunet.pipeline.entries import TableEntry
from xpunet.pipeline.lowering import NodeIntents, NodePorts, lower
from xpunet.pipeline.schema import FLAG_LOCAL_PODS_USE_INTERNAL

PORTS = NodePorts({"d/a": 11}, host=1, uplinks=(2,))
NAMES = {11: "xv11", 2: "up0"}
EXT = 0xC6336403  # 198.51.100.3
SID = 9
INTERNAL, EXTERNAL = SID * 2, SID * 2 + 1


def bset(*ips: str, when_empty: str = "reject") -> BackendSet:
    bs = tuple(Backend(ip, 8080) for ip in sorted(ips))
    table = build_table([b.identity for b in bs], size=13) if bs else ()
    return BackendSet(bs, table, when_empty)  # type: ignore[arg-type]  # literal from the callers


def entries(
    internal: tuple[str, ...] = ("10.0.1.10", "10.0.2.10", "10.0.3.10"),
    external: tuple[str, ...] = ("10.0.1.10",),
    *,
    affinity: bool = False,
    snat: bool = False,
) -> tuple[TableEntry, ...]:
    svc = LbServicePort(
        SID,
        "d",
        "web",
        "ipv4",
        "TCP",
        80,
        frontends=(
            Frontend("cluster_ip", "10.96.0.9", 80),
            Frontend("external_ip", "198.51.100.3", 80),
            Frontend("node_port", None, 30009),
        ),
        internal=bset(*internal),
        external=bset(*external, when_empty="reject" if not internal else "drop"),
        external_snat=snat,
        affinity=Affinity(30) if affinity else None,
    )
    eps = (PolicyEndpoint("d", "a", "u1", "n1", ("10.0.1.2",)),)
    low = lower(NodeIntents("n1", eps, (), (svc,), addresses=LbNodeAddresses("n1", ("192.168.0.1",))), PORTS)
    assert low.problems == ()
    return low.entries


def fresh(es: tuple[TableEntry, ...]) -> dict[tuple[str, tuple[object, ...]], object]:
    s = KernelState(NAMES)
    s.replace_all(es)
    return s.items()


def test_lowering_sets_the_flag_only_for_a_distinct_external_set_without_snat() -> None:
    fronts = [e for e in entries() if e.alias.startswith(("service_frontend", "node_port"))]
    flagged = {e.alias for e in fronts if e.param("flags") & FLAG_LOCAL_PODS_USE_INTERNAL}
    assert flagged == {"service_frontend_v4", "node_port_v4"}  # the external IP and the NodePort
    snat = [e for e in entries(snat=True) if e.alias.startswith(("service_frontend", "node_port"))]
    assert not any(e.param("flags") & FLAG_LOCAL_PODS_USE_INTERNAL for e in snat)


def test_local_pods_get_the_internal_slots_of_the_frontends_backend_map() -> None:
    items = fresh(entries())
    # Everyone: the external group (one local backend); local pods: the internal group (three).
    assert items[("fe_pick4", (EXT, 6, 80))] == "goto:fe4_h1"
    assert items[("fi_pick4", (EXT, 6, 80))] == "goto:fi4_h3"
    assert items[("fi_chk4", (EXT, 6, 80))] == "accept"
    assert items[("np_pick4", (6, 30009))] == "goto:np4_h1"
    assert items[("ni_pick4", (6, 30009))] == "goto:ni4_h3"
    assert items[("ni_chk4", (6, 30009))] == "accept"
    own = sorted(cast(int, k[1][2]) for k in items if k[0] == "fe_be4_tcp" and k[1][0] == EXT)
    assert own == [0, *(INTERNAL_SLOT_OFFSET + i for i in range(3))]
    assert {items[("fe_be4_tcp", (EXT, 80, INTERNAL_SLOT_OFFSET + i))] for i in range(3)} == {
        (0x0A00010A, 8080),
        (0x0A00020A, 8080),
        (0x0A00030A, 8080),
    }
    assert (CHAIN, ("fi4_h3",)) in items
    assert (CHAIN, ("ni4_h3",)) in items
    # The ClusterIP has no flag: nothing for pods there.
    assert not any(k[0] == "fi_pick4" and k[1][0] != EXT for k in items)


def test_an_empty_external_set_still_serves_local_pods() -> None:
    items = fresh(entries(external=()))
    assert ("fe_drop4", (EXT, 6, 80)) in items  # clients from elsewhere: kube-proxy's Local drop
    assert ("np_drop4", (6, 30009)) in items
    assert items[("fi_pick4", (EXT, 6, 80))] == "goto:fi4_h3"
    assert items[("fi_chk4", (EXT, 6, 80))] == "accept"


def test_an_empty_internal_set_rejects_or_drops_local_pods() -> None:
    items = fresh(entries(internal=(), external=()))
    # No usable endpoint at all: the internal set rejects.
    assert items[("fi_chk4", (EXT, 6, 80))] == "goto:reject_no_backend"
    assert items[("ni_chk4", (6, 30009))] == "goto:reject_no_backend"
    assert not any(k[0] in ("fi_pick4", "ni_pick4") for k in items)


def test_affinity_of_local_pods_is_the_internal_groups() -> None:
    items = fresh(entries(affinity=True))
    assert items[("fe_aff4", (EXT, 6, 80))] == AFFINITY_CT_MARK | EXTERNAL
    assert items[("fi_aff4", (EXT, 6, 80))] == AFFINITY_CT_MARK | INTERNAL
    assert items[("ni_aff4", (6, 30009))] == AFFINITY_CT_MARK | INTERNAL
    assert items[("fi_pick4", (EXT, 6, 80))] == "goto:fi4_a3"
    assert (AFFINITY_LIVE, (4, INTERNAL)) in items
    assert (AFFINITY_LIVE, (4, EXTERNAL)) in items


def test_internal_pick_chains_hash_into_the_offset_slots() -> None:
    rules = pick_chain_rules("fi4_h3")
    assert all(f"offset {INTERNAL_SLOT_OFFSET:#x} map @fe_be4_" in r for r in rules)
    assert all("ip daddr . th dport . jhash ip saddr . th sport mod 3" in r for r in rules)
    assert all("offset" in r and "@np_be6_" in r for r in pick_chain_rules("ni6_h2"))
    assert is_dynamic_chain("ni6_a2")
    assert dynamic_chain_rules("ni6_a2")[0].startswith("meta l4proto tcp dnat")


def test_only_pods_consult_the_internal_maps() -> None:
    chains = {c.name: c for c in CHAINS}
    assert any("@fi_chk4" in r for r in chains["pod_svc_check"].rules)
    for name in ("svc_check", "out_nat"):
        assert not any("fi_" in r or "ni_" in r for r in chains[name].rules), name
    assert all("goto pod_svc_check" in r for r in chains["from_pod"].rules[:2])
    pre = chains["pre_nat"].rules
    picks = [r for r in pre if "vmap @" in r and "_pick4" in r]
    # Frontend addresses before NodePorts; a pod's internal map before the frontend's own.
    assert [r.rsplit("@", 1)[1] for r in picks] == ["fi_pick4", "fe_pick4", "ni_pick4", "np_pick4"]
    assert all(r.startswith("iifname @pod_ifs") for r in picks if "@fi_" in r or "@ni_" in r)


SETS = st.lists(st.sampled_from(["10.0.1.10", "10.0.2.10", "10.0.3.10"]), unique=True, max_size=3)


@settings(max_examples=25, deadline=None)
@given(st.lists(st.tuples(SETS, SETS, st.booleans()), min_size=1, max_size=5))
def test_incremental_equals_full_render(steps: list[tuple[list[str], list[str], bool]]) -> None:
    s = KernelState(NAMES)
    prev: tuple[TableEntry, ...] = ()
    for internal, external, aff in steps:
        cur = entries(tuple(internal), tuple(external), affinity=aff)
        s.update(diff(prev, cur).updates)
        prev = cur
    assert s.items() == fresh(prev)
