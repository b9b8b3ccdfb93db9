"""Where IP sets are published: per node while few nodes use a set, once under ``global.`` beyond.

The write cost of a membership change must not grow with the number of nodes
(issue 4, incremental benchmark), and narrow sets must still reach only the
nodes that use them.  Also: the order of a flush's keys (sets before the
endpoints referencing them; endpoint deletes before set deletes).
"""

from __future__ import annotations

import pytest

from xpunet.ir.policy import GLOBAL_IPSET_PREFIX, IPSet, PolicyEndpoint, global_ipset_key, ipset_key
from xpunet.model.objects import (
    IPBlock,
    Labels,
    LabelSelector,
    NetworkPolicy,
    NetworkPolicyPeer,
    NetworkPolicyRule,
    Pod,
)
from xpunet.pipeline.groups import NodePorts
from xpunet.pipeline.incremental import NodeLowering
from xpunet.pipeline.lowering import lower, node_intents_from_kv
from xpunet.policy.compiler import PolicyCompiler
from xpunet.policy.reference import evaluate_intents


def server(name: str, ip: str, node: str) -> Pod:
    return Pod("a", name, name, node=node, ips=(ip,), labels=Labels({"app": "db"}), phase="Running")


def client(name: str, ip: str, node: str = "n0", app: str = "web") -> Pod:
    return Pod("a", name, name, node=node, ips=(ip,), labels=Labels({"app": app}), phase="Running")


FROM_WEB = NetworkPolicy(
    "a",
    "from-web",
    pod_selector=LabelSelector(Labels({"app": "db"})),
    ingress=(
        NetworkPolicyRule(peers=(NetworkPolicyPeer(pod_selector=LabelSelector(Labels({"app": "web"}))),)),
    ),
)
FROM_BLOCK = NetworkPolicy(
    "a",
    "from-block",
    pod_selector=LabelSelector(Labels({"app": "db"})),
    ingress=(NetworkPolicyRule(peers=(NetworkPolicyPeer(ip_block=IPBlock("192.168.0.0/16")),)),),
)


def cluster(policy: NetworkPolicy, nodes: int, *, global_set_nodes: int) -> PolicyCompiler:
    compiler = PolicyCompiler(global_set_nodes=global_set_nodes)
    compiler.upsert_policy(policy)
    compiler.upsert_pod(client("web", "10.0.0.1"))
    for i in range(nodes):
        compiler.upsert_pod(server(f"db{i}", f"10.0.1.{i + 1}", f"n{i + 1}"))
    compiler.flush()
    return compiler


def set_keys(keys: object) -> list[str]:
    assert isinstance(keys, dict)
    return [k for k in keys if ".policy.ipset." in k]


def the_set_id(compiler: PolicyCompiler) -> str:
    ids = {v.id for v in compiler.intents.values() if isinstance(v, IPSet)}
    assert len(ids) == 1
    return ids.pop()


@pytest.mark.parametrize(
    ("nodes", "threshold", "global_"),
    [
        pytest.param(3, 4, False, id="below threshold: per node"),
        pytest.param(4, 4, True, id="at threshold: global"),
        pytest.param(50, 4, True, id="far above: global"),
        pytest.param(1, 1, True, id="threshold 1: always global"),
    ],
)
def test_a_set_lives_per_node_below_the_threshold_and_globally_from_it(
    nodes: int, threshold: int, global_: bool
) -> None:
    compiler = cluster(FROM_WEB, nodes, global_set_nodes=threshold)
    sid = the_set_id(compiler)
    want = [global_ipset_key(sid)] if global_ else sorted(ipset_key(f"n{i + 1}", sid) for i in range(nodes))
    assert sorted(set_keys(compiler.intents)) == want
    # The client's own node uses no set: it never holds a copy.
    assert ipset_key("n0", sid) not in compiler.intents


@pytest.mark.parametrize(
    ("nodes", "writes"), [pytest.param(3, 3, id="narrow"), pytest.param(40, 1, id="wide")]
)
def test_a_membership_change_writes_one_key_per_holder(nodes: int, writes: int) -> None:
    compiler = cluster(FROM_WEB, nodes, global_set_nodes=4)
    compiler.upsert_pod(client("web2", "10.0.0.2", node="n0"))
    changed = compiler.flush()
    assert len(set_keys(changed)) == writes
    assert all(
        isinstance(v, IPSet) and v.members == ("10.0.0.1/32", "10.0.0.2/32")
        for v in changed.values()
        if not isinstance(v, PolicyEndpoint)
    )


def test_a_wide_set_moves_to_nodes_when_users_leave_and_back_when_they_return() -> None:
    # An ipBlock set: its members never change, only the nodes using it do.
    compiler = cluster(FROM_BLOCK, 3, global_set_nodes=3)
    sid = the_set_id(compiler)
    assert set_keys(compiler.intents) == [global_ipset_key(sid)]

    compiler.delete_pod("a", "db2")  # the one on n3
    changed = compiler.flush()
    keys = set_keys(changed)
    # The node copies are written before the global key is deleted: no moment without the set.
    assert sorted(keys[:2]) == [ipset_key("n1", sid), ipset_key("n2", sid)]
    assert keys[2:] == [global_ipset_key(sid)]
    assert changed[global_ipset_key(sid)] is None
    assert sorted(set_keys(compiler.intents)) == [ipset_key("n1", sid), ipset_key("n2", sid)]

    compiler.upsert_pod(server("db2", "10.0.1.3", "n3"))
    changed = compiler.flush()
    keys = set_keys(changed)
    assert keys[0] == global_ipset_key(sid)
    assert sorted(keys[1:]) == [ipset_key("n1", sid), ipset_key("n2", sid)]
    assert all(changed[k] is None for k in keys[1:])
    assert set_keys(compiler.intents) == [global_ipset_key(sid)]


def test_a_new_user_of_a_global_set_writes_only_its_endpoint() -> None:
    compiler = cluster(FROM_WEB, 5, global_set_nodes=4)
    compiler.upsert_pod(server("db9", "10.0.1.9", "n9"))
    changed = compiler.flush()
    assert list(changed) == ["node.n9.policy.ep.a.db9"]


def test_a_new_user_of_a_narrow_set_gets_the_set_before_its_endpoint() -> None:
    compiler = cluster(FROM_WEB, 1, global_set_nodes=4)
    sid = the_set_id(compiler)
    compiler.upsert_pod(server("db9", "10.0.1.9", "n9"))
    assert list(compiler.flush()) == [ipset_key("n9", sid), "node.n9.policy.ep.a.db9"]
    compiler.delete_pod("a", "db9")
    assert list(compiler.flush()) == ["node.n9.policy.ep.a.db9", ipset_key("n9", sid)]


def test_global_sets_are_enforced_like_node_copies() -> None:
    compiler = cluster(FROM_WEB, 5, global_set_nodes=2)
    intents = compiler.intents
    assert any(k.startswith(GLOBAL_IPSET_PREFIX) for k in intents)
    allowed = {"dst_ip": "10.0.1.3", "port": 80, "protocol": "TCP"}
    assert evaluate_intents(intents, src_ip="10.0.0.1", **allowed)  # type: ignore[arg-type]
    assert not evaluate_intents(intents, src_ip="10.0.0.9", **allowed)  # type: ignore[arg-type]


def test_threshold_must_be_positive() -> None:
    with pytest.raises(ValueError, match="global_set_nodes"):
        PolicyCompiler(global_set_nodes=0)


def test_every_placement_lowers_to_the_same_datapath_entries() -> None:
    """The datapath reads sets from node.<node>. and global. alike: the layout changes no table entry."""
    policies = (FROM_WEB, FROM_BLOCK)
    lowered: dict[str, list[object]] = {}
    for threshold in (1, 3, 16):
        compiler = PolicyCompiler(global_set_nodes=threshold)
        for policy in policies:
            compiler.upsert_policy(policy)
        compiler.upsert_pod(client("web", "10.0.0.1", node="n1"))
        for i in range(5):
            compiler.upsert_pod(server(f"db{i}", f"10.0.1.{i + 1}", f"n{i % 4 + 1}"))
        intents = dict(compiler.flush())
        for node in ("n1", "n2", "n4"):
            refs = [
                f"{v.namespace}/{v.pod}"
                for v in intents.values()
                if isinstance(v, PolicyEndpoint) and v.node == node
            ]
            ports = NodePorts(
                endpoints={ref: 10 + i for i, ref in enumerate(sorted(refs))}, host=1, uplinks=(2,)
            )
            incremental = NodeLowering(node, ports)
            for key, value in intents.items():
                incremental.set_intent(key, value)
            incremental.flush()
            result = incremental.lowered()
            assert result == lower(
                node_intents_from_kv(node, intents), ports, allocation=incremental.allocation()
            )
            assert not result.problems
            lowered.setdefault(node, []).append(result.entries)
    for node, results in lowered.items():
        assert results[0], node
        assert all(r == results[0] for r in results), node


# --- shards: a set is published as shards of ~32-64 members (xpunet.policy.members) -------------


def crowd(policy: NetworkPolicy, clients: int, servers: int, *, global_set_nodes: int = 16) -> PolicyCompiler:
    """``clients`` web pods (the set's members) on n0, ``servers`` db pods using the set on n1..."""
    compiler = PolicyCompiler(global_set_nodes=global_set_nodes)
    compiler.upsert_policy(policy)
    for i in range(clients):
        compiler.upsert_pod(client(f"web{i}", f"10.1.{i // 250}.{i % 250 + 1}"))
    for i in range(servers):
        compiler.upsert_pod(server(f"db{i}", f"10.0.1.{i + 1}", f"n{i + 1}"))
    compiler.flush()
    return compiler


def shard_values(intents: object, prefix: str) -> dict[int, IPSet]:
    assert isinstance(intents, dict)
    return {v.shard: v for k, v in intents.items() if k.startswith(prefix) and isinstance(v, IPSet)}


@pytest.mark.parametrize(("members", "shards"), [(1, 1), (64, 1), (65, 2), (128, 2), (129, 4), (1000, 16)])
def test_a_set_is_split_into_power_of_two_shards_by_member_hash(members: int, shards: int) -> None:
    compiler = crowd(FROM_WEB, members, 1)
    sid = the_set_id(compiler)
    held = shard_values(compiler.intents, f"node.n1.policy.ipset.{sid}.")
    assert sorted(held) == list(range(shards))
    assert all(v.shards == shards for v in held.values())
    union = [m for v in held.values() for m in v.members]
    assert len(union) == len(set(union)) == members  # a partition: every member in exactly one shard
    assert max(len(v.members) for v in held.values()) <= 2 * 64  # hashing spreads them


@pytest.mark.parametrize("servers", [pytest.param(3, id="narrow"), pytest.param(20, id="wide")])
def test_one_member_change_in_a_big_set_writes_one_small_key_per_holder(servers: int) -> None:
    compiler = crowd(FROM_WEB, 2000, servers)
    sid = the_set_id(compiler)
    compiler.upsert_pod(client("web-new", "10.2.0.1"))
    changed = compiler.flush()
    keys = set_keys(changed)
    holders = 1 if servers >= 16 else servers
    assert len(keys) == holders
    values = {changed[k] for k in keys}
    assert len(values) == 1  # the same shard, rendered once, shared by every holder
    (value,) = values
    assert isinstance(value, IPSet)
    assert value.id == sid
    assert value.shards == 32
    assert "10.2.0.1/32" in value.members
    assert len(value.members) <= 2 * 64


def test_repartitioning_writes_gaining_shards_first_and_deletes_surplus_last() -> None:
    # 64 members: 1 shard.  A 65th: 2 shards.  The new shard 1 (members moving out of shard 0)
    # is written before shard 0 loses them, so a reader's union never misses a member.
    compiler = crowd(FROM_WEB, 64, 1)
    sid = the_set_id(compiler)
    before = shard_values(compiler.intents, "node.n1.")
    assert list(before) == [0]
    compiler.upsert_pod(client("web-65", "10.2.0.1"))
    changed = compiler.flush()
    assert set_keys(changed) == [ipset_key("n1", sid, 1), ipset_key("n1", sid, 0)]
    after = shard_values(compiler.intents, "node.n1.")
    assert {m for v in after.values() for m in v.members} == {*before[0].members, "10.2.0.1/32"}

    # And back: shard 0 takes shard 1's members back before shard 1 is deleted (after the endpoints).
    compiler.delete_pod("a", "web-65")
    changed = compiler.flush()
    assert set_keys(changed) == [ipset_key("n1", sid, 0), ipset_key("n1", sid, 1)]
    assert changed[ipset_key("n1", sid, 1)] is None
    assert shard_values(compiler.intents, "node.n1.") == {0: before[0]}


def test_a_sharded_set_moving_between_node_and_global_keys_moves_every_shard() -> None:
    compiler = crowd(FROM_WEB, 200, 3, global_set_nodes=3)
    sid = the_set_id(compiler)
    assert sorted(set_keys(compiler.intents)) == [global_ipset_key(sid, k) for k in range(4)]
    compiler.delete_pod("a", "db2")
    changed = compiler.flush()
    assert sorted(k for k in set_keys(changed) if changed[k] is None) == [
        global_ipset_key(sid, k) for k in range(4)
    ]
    assert sorted(set_keys(compiler.intents)) == sorted(
        ipset_key(n, sid, k) for n in ("n1", "n2") for k in range(4)
    )


def test_sharded_sets_lower_like_whole_ones() -> None:
    """A datapath unions the shards: the entries equal those of one big IPSet value."""
    compiler = crowd(FROM_WEB, 300, 1)
    intents = dict(compiler.intents)
    shards = {k: v for k, v in intents.items() if isinstance(v, IPSet)}
    assert len(shards) == 8
    whole: dict[str, object] = {k: v for k, v in intents.items() if not isinstance(v, IPSet)}
    sid = the_set_id(compiler)
    whole[ipset_key("n1", sid)] = IPSet(sid, tuple(m for v in shards.values() for m in v.members))
    ports = NodePorts(endpoints={"a/db0": 10}, host=1, uplinks=(2,))
    results = []
    for view in (intents, whole):
        incremental = NodeLowering("n1", ports)
        for key, value in view.items():
            incremental.set_intent(key, value)
        incremental.flush()
        result = incremental.lowered()
        assert not result.problems
        assert result == lower(node_intents_from_kv("n1", view), ports, allocation=incremental.allocation())
        results.append(result.entries)
    assert results[0] == results[1]
    allowed = {"dst_ip": "10.0.1.1", "port": 80, "protocol": "TCP"}
    assert evaluate_intents(intents, src_ip="10.1.1.1", **allowed)  # type: ignore[arg-type]
    assert not evaluate_intents(intents, src_ip="10.3.0.1", **allowed)  # type: ignore[arg-type]
