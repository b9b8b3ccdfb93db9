"""Property tests: compiled intents agree with the reference; incremental equals from-scratch.

Random small clusters (dual-stack pods on two nodes, hostNetwork and finished
pods, named ports with differing numbers) and random policies (every peer and
port form of networking.k8s.io/v1).  The compiled intents, evaluated like a
datapath would, must answer every connection question exactly as the
reference evaluator does; replaying the objects in another order, split over
several flushes or with intermediate versions, must end in the same intents.
"""

from __future__ import annotations

import random
import zlib
from dataclasses import replace
from typing import TypeVar

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from xpunet.ir.policy import IPSet, PolicyEndpoint, global_ipset_key, ipset_key
from xpunet.model.objects import (
    NAMESPACE_NAME_LABEL,
    ContainerPort,
    IPBlock,
    Labels,
    LabelSelector,
    LabelSelectorRequirement,
    Namespace,
    NetworkPolicy,
    NetworkPolicyPeer,
    NetworkPolicyPort,
    NetworkPolicyRule,
    Pod,
    Protocol,
)
from xpunet.policy.compiler import PolicyCompiler
from xpunet.policy.members import shard_count
from xpunet.policy.reference import Cluster, evaluate_intents, is_allowed

NAMESPACES = ("a", "b", "c")
NODES = ("n1", "n2")
LABEL_VALUES: dict[str, tuple[str, ...]] = {"app": ("web", "db"), "tier": ("fe", "be")}
NS_LABEL_VALUES: dict[str, tuple[str, ...]] = {"team": ("x", "y"), "env": ("prod",)}
PORT_NAMES = ("http", "dns")
BLOCKS = (
    IPBlock("10.0.0.0/24", ("10.0.0.0/29",)),
    IPBlock("10.0.0.0/8"),
    IPBlock("192.168.0.0/16", ("192.168.1.0/24", "192.168.2.128/25")),
    IPBlock("fd00::/64", ("fd00::/125",)),
    IPBlock("0.0.0.0/0"),
)
EXTERNAL_IPS = ("192.168.1.5", "192.168.3.3", "8.8.8.8", "fd00::2:1")
PORTS = (53, 80, 81, 8080)
PROTOCOLS: tuple[Protocol, ...] = ("TCP", "UDP", "SCTP")
# Weighted towards TCP so named ports and rules meet often enough to matter.
LIKELY_PROTOCOLS: tuple[Protocol, ...] = ("TCP", "TCP", "TCP", "UDP", "SCTP")


def labels_from(values: dict[str, tuple[str, ...]]) -> st.SearchStrategy[Labels]:
    return st.dictionaries(
        st.sampled_from(sorted(values)), st.sampled_from(sorted({v for vs in values.values() for v in vs}))
    ).map(Labels)


def selectors(values: dict[str, tuple[str, ...]]) -> st.SearchStrategy[LabelSelector]:
    keys = [*sorted(values), "missing"]
    all_values = sorted({v for vs in values.values() for v in vs})
    requirement = st.one_of(
        st.builds(
            LabelSelectorRequirement,
            st.sampled_from(keys),
            st.sampled_from(("In", "NotIn")),
            st.lists(st.sampled_from(all_values), min_size=1, max_size=2, unique=True).map(
                lambda v: tuple(sorted(v))
            ),
        ),
        st.builds(
            LabelSelectorRequirement, st.sampled_from(keys), st.sampled_from(("Exists", "DoesNotExist"))
        ),
    )
    return st.builds(
        LabelSelector,
        labels_from(values),
        st.lists(requirement, max_size=2).map(lambda reqs: tuple(sorted(set(reqs), key=repr))),
    )


@st.composite
def pods(draw: st.DrawFn) -> tuple[Pod, ...]:
    count = draw(st.integers(1, 7))
    out = []
    for i in range(count):
        ips: tuple[str, ...] = (f"10.0.0.{i + 2}",)
        family = draw(st.sampled_from(("v4", "dual", "none")))
        if family == "dual":
            ips = (*ips, f"fd00::{i + 2}")
        elif family == "none" and draw(st.booleans()):
            ips = ()
        ports = tuple(
            ContainerPort(port, proto, name)
            for name, port, proto in draw(
                st.lists(
                    st.tuples(
                        st.sampled_from(PORT_NAMES), st.sampled_from(PORTS), st.sampled_from(LIKELY_PROTOCOLS)
                    ),
                    max_size=2,
                    unique_by=lambda t: t[0],
                )
            )
        )
        out.append(
            Pod(
                namespace=draw(st.sampled_from(NAMESPACES)),
                name=f"p{i}",
                uid=f"u{i}",
                node=draw(st.sampled_from((*NODES, None))) if ips else None,
                ips=ips,
                labels=draw(labels_from(LABEL_VALUES)),
                ports=ports,
                phase=draw(st.sampled_from(("Running", "Running", "Running", "Succeeded"))),
                host_network=draw(st.integers(0, 9)) == 0,
            )
        )
    return tuple(out)


@st.composite
def namespaces(draw: st.DrawFn) -> tuple[Namespace, ...]:
    """Some namespaces have an object (with labels), others only exist through their pods."""
    names = draw(st.lists(st.sampled_from(NAMESPACES), unique=True))
    return tuple(
        Namespace(n, Labels({**draw(labels_from(NS_LABEL_VALUES)), NAMESPACE_NAME_LABEL: n})) for n in names
    )


peers = st.one_of(
    st.builds(NetworkPolicyPeer, pod_selector=selectors(LABEL_VALUES)),
    st.builds(NetworkPolicyPeer, namespace_selector=selectors(NS_LABEL_VALUES)),
    st.builds(
        NetworkPolicyPeer, pod_selector=selectors(LABEL_VALUES), namespace_selector=selectors(NS_LABEL_VALUES)
    ),
    st.builds(NetworkPolicyPeer, ip_block=st.sampled_from(BLOCKS)),
)

policy_ports = st.one_of(
    st.builds(NetworkPolicyPort, st.sampled_from(LIKELY_PROTOCOLS)),
    st.builds(NetworkPolicyPort, st.sampled_from(LIKELY_PROTOCOLS), st.sampled_from(PORTS)),
    st.builds(
        NetworkPolicyPort, st.sampled_from(LIKELY_PROTOCOLS), st.just(53), st.sampled_from((53, 80, 8080))
    ),
    st.builds(NetworkPolicyPort, st.sampled_from(LIKELY_PROTOCOLS), st.sampled_from(PORT_NAMES)),
)

rules = st.builds(
    NetworkPolicyRule,
    st.lists(policy_ports, max_size=2).map(tuple),
    st.lists(peers, max_size=2).map(tuple),
)


@st.composite
def policies(draw: st.DrawFn) -> tuple[NetworkPolicy, ...]:
    names = draw(st.lists(st.sampled_from(("p1", "p2", "p3")), max_size=3, unique=True))
    out = []
    for name in names:
        out.append(
            NetworkPolicy(
                namespace=draw(st.sampled_from(NAMESPACES)),
                name=name,
                pod_selector=draw(selectors(LABEL_VALUES)),
                policy_types=draw(st.sampled_from((("Ingress",), ("Egress",), ("Ingress", "Egress")))),
                ingress=tuple(draw(st.lists(rules, max_size=2))),
                egress=tuple(draw(st.lists(rules, max_size=2))),
            )
        )
    return tuple(out)


scenarios = st.builds(Cluster, pods(), namespaces(), policies())


@st.composite
def evolutions(draw: st.DrawFn) -> tuple[Cluster, Cluster]:
    """A state and a later one: most objects kept, some edited in place (labels, ports), some
    deleted, some added; so edits that must ripple to unchanged objects get exercised."""
    first = draw(scenarios)
    other = draw(scenarios)
    action = st.sampled_from(("keep", "keep", "edit", "delete"))
    new_pods: list[Pod] = []
    for pod in first.pods:
        what = draw(action)
        if what == "keep":
            new_pods.append(pod)
        elif what == "edit":
            if draw(st.booleans()):
                new_pods.append(replace(pod, labels=draw(labels_from(LABEL_VALUES))))
            else:
                new_pods.append(
                    replace(pod, ports=(ContainerPort(draw(st.sampled_from(PORTS)), "TCP", "http"),))
                )
    new_nss: list[Namespace] = []
    for ns in first.namespaces:
        what = draw(action)
        if what == "keep":
            new_nss.append(ns)
        elif what == "edit":
            labels = draw(labels_from(NS_LABEL_VALUES))
            new_nss.append(replace(ns, labels=Labels({**labels, NAMESPACE_NAME_LABEL: ns.name})))
    new_pols = [p for p in first.policies if draw(action) != "delete"]

    def add(kept: list[_T], new: tuple[_T, ...]) -> tuple[_T, ...]:
        names = {_ident(o) for o in kept}
        return tuple(kept + [n for n in new if _ident(n) not in names and draw(st.booleans())])

    return first, Cluster(
        add(new_pods, other.pods), add(new_nss, other.namespaces), add(new_pols, other.policies)
    )


_T = TypeVar("_T", Pod, Namespace, NetworkPolicy)


def _ident(obj: Pod | Namespace | NetworkPolicy) -> tuple[str, str]:
    if isinstance(obj, Namespace):
        return ("", obj.name)
    return (obj.namespace, obj.name)


SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
# Nodes from which a set is published globally: 1 (always global), 2 (global when both nodes use
# it, so sets move as endpoints come and go), 16 (never, with two nodes).
GLOBAL_SET_NODES = st.sampled_from((1, 2, 16))


def compile_all(cluster: Cluster, global_set_nodes: int = 16) -> PolicyCompiler:
    compiler = PolicyCompiler(global_set_nodes=global_set_nodes)
    for ns in cluster.namespaces:
        compiler.upsert_namespace(ns)
    for pol in cluster.policies:
        assert compiler.upsert_policy(pol) is None
    for pod in cluster.pods:
        compiler.upsert_pod(pod)
    compiler.flush()
    return compiler


def all_ips(cluster: Cluster) -> list[str]:
    return sorted({ip for p in cluster.pods for ip in p.ips} | set(EXTERNAL_IPS))


def assert_placement(intents: dict[str, object], global_set_nodes: int) -> None:
    """Each referenced set is in one place (globally iff endpoints on enough nodes reference it),
    as all its shards, each holding the members that hash to it."""
    nodes_of: dict[str, set[str]] = {}
    for value in intents.values():
        if isinstance(value, PolicyEndpoint):
            for rule in (*value.ingress, *value.egress):
                if rule.ipset is not None:
                    nodes_of.setdefault(rule.ipset, set()).add(value.node)
    shards = {v.id: v.shards for v in intents.values() if isinstance(v, IPSet)}
    sizes: dict[str, set[str]] = {}
    for value in intents.values():
        if isinstance(value, IPSet):
            assert value.shards == shards[value.id]
            assert all(zlib.crc32(m.encode()) % value.shards == value.shard for m in value.members)
            sizes.setdefault(value.id, set()).update(value.members)
    for set_id, members in sizes.items():
        assert shards[set_id] == shard_count(len(members))
    expected: set[str] = set()
    for set_id, nodes in nodes_of.items():
        count = shards.get(set_id, 1)
        if len(nodes) >= global_set_nodes:
            expected.update(global_ipset_key(set_id, k) for k in range(count))
        else:
            expected.update(ipset_key(node, set_id, k) for node in nodes for k in range(count))
    held = {k for k, v in intents.items() if isinstance(v, IPSet)}
    assert held == expected


@SETTINGS
@given(scenarios, GLOBAL_SET_NODES)
def test_intents_agree_with_reference(cluster: Cluster, global_set_nodes: int) -> None:
    intents = compile_all(cluster, global_set_nodes).intents
    assert_placement(dict(intents), global_set_nodes)
    ips = all_ips(cluster)
    for src in ips:
        for dst in ips:
            if ":" in src != ":" in dst:
                continue
            for port in PORTS:
                for proto in PROTOCOLS:
                    for local in (False, True):
                        want = is_allowed(
                            cluster, src_ip=src, dst_ip=dst, port=port, protocol=proto, from_local_node=local
                        )
                        got = evaluate_intents(
                            intents, src_ip=src, dst_ip=dst, port=port, protocol=proto, from_local_node=local
                        )
                        assert got == want, (src, dst, port, proto, local)


@SETTINGS
@given(evolutions(), st.randoms(use_true_random=False), GLOBAL_SET_NODES)
def test_incremental_replay_matches_fresh_compile(
    states: tuple[Cluster, Cluster], rnd: random.Random, global_set_nodes: int
) -> None:
    """Go from ``first`` to ``final`` through shuffled, split updates; end as a fresh compile of ``final``."""
    first, final = states
    compiler = PolicyCompiler(global_set_nodes=global_set_nodes)
    applied: dict[str, str] = {}

    def apply_state(cluster: Cluster, present: set[tuple[str, str, str]]) -> set[tuple[str, str, str]]:
        ops: list[tuple[str, object]] = []
        now: set[tuple[str, str, str]] = set()
        for ns in cluster.namespaces:
            ops.append(("ns", ns))
            now.add(("ns", "", ns.name))
        for pol in cluster.policies:
            ops.append(("pol", pol))
            now.add(("pol", pol.namespace, pol.name))
        for pod in cluster.pods:
            ops.append(("pod", pod))
            now.add(("pod", pod.namespace, pod.name))
        for gone in present - now:
            ops.append(("del", gone))
        rnd.shuffle(ops)
        for kind, obj in ops:
            if kind == "ns":
                assert isinstance(obj, Namespace)
                compiler.upsert_namespace(obj)
            elif kind == "pol":
                assert isinstance(obj, NetworkPolicy)
                compiler.upsert_policy(obj)
            elif kind == "pod":
                assert isinstance(obj, Pod)
                compiler.upsert_pod(obj)
            else:
                assert isinstance(obj, tuple)
                what, ns_name, name = obj
                if what == "ns":
                    compiler.delete_namespace(name)
                elif what == "pol":
                    compiler.delete_policy(ns_name, name)
                else:
                    compiler.delete_pod(ns_name, name)
            if rnd.random() < 0.3:
                apply_flush()
        return now

    def apply_flush() -> None:
        for key, value in compiler.flush().items():
            if value is None:
                assert key in applied, f"delete of a key never written: {key}"
                del applied[key]
            else:
                applied[key] = repr(value)

    present = apply_state(first, set())
    apply_flush()
    apply_state(final, present)
    apply_flush()
    fresh_compiler = compile_all(final, global_set_nodes)
    fresh = fresh_compiler.intents
    assert applied == {k: repr(v) for k, v in fresh.items()}
    assert compiler.intents == fresh
    # Nothing left behind in the bookkeeping of sets (a leak would grow with churn).
    for name in ("_out_sets", "_set_nodes", "_placed", "_global_sets", "_set_outs"):
        assert getattr(compiler, name) == getattr(fresh_compiler, name), name
    assert_placement(dict(fresh), global_set_nodes)
