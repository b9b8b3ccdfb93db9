"""Counter statistics on the kernel target: a datapath (intents in KV on a real nats-server) programs a
node namespace; real TCP from a pod is allowed by a NetworkPolicy rule or dropped by the ACL default,
and the per-policy and default-drop totals (KV report and metrics) move with it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from xpunet.bus.api import StateStore
from xpunet.bus.nats import NatsBus
from xpunet.datapath.counters import DEFAULT_DENY, CounterReport, status_key
from xpunet.datapath.kernel.testbed import Topology
from xpunet.datapath.kernel_adapter import KernelTargetAdapter
from xpunet.datapath.service import DatapathOptions, DatapathService
from xpunet.ir.keys import node_token
from xpunet.ir.lb import Backend, BackendSet, Frontend, LbServicePort, service_key
from xpunet.ir.policy import PolicyEndpoint, PolicyRule, PortRange, RuleOrigin, endpoint_key
from xpunet.lb.maglev import build_table
from xpunet.runtime.metrics_text import render_prometheus
from xpunet.testing.nats import unique_name
from xpunet.wire import decode_object, encode_object

pytestmark = pytest.mark.root

PORTS = {"client": 11, "web": 12}
ADDRS = {"client": ("10.0.1.2", "fd00:1::2"), "web": ("10.0.1.3", "fd00:1::3")}
WITHIN = 30.0


@pytest.fixture
def topo() -> Iterator[Topology]:
    t = Topology()
    try:
        t.create_node()
        for name, port in PORTS.items():
            t.add_pod(name, port, *ADDRS[name])
        t.serve("web", "tcp/8080", "tcp/9999")
        yield t
    finally:
        t.close()


@pytest.fixture
async def stores(bus: NatsBus) -> AsyncIterator[tuple[StateStore, StateStore, StateStore]]:
    names = [unique_name("kc") for _ in range(3)]
    yield (await bus.kv(names[0]), await bus.kv(names[1]), await bus.kv(names[2]))
    if bus.connected:
        for n in names:
            await bus.delete_kv(n)


async def seed(intents: StateStore) -> int:
    rule = PolicyRule(RuleOrigin("d", "allow-web", "ingress", 0), ports=(PortRange("TCP", 8080, 8080),))
    await intents.put(
        endpoint_key("n1", "d", "client"),
        encode_object(PolicyEndpoint("d", "client", "u1", "n1", ADDRS["client"])),
    )
    await intents.put(
        endpoint_key("n1", "d", "web"),
        encode_object(
            PolicyEndpoint("d", "web", "u2", "n1", ADDRS["web"], ingress_isolated=True, ingress=(rule,))
        ),
    )
    backends = (Backend(ADDRS["web"][0], 8080),)
    svc = LbServicePort(
        1,
        "d",
        "web",
        "ipv4",
        "TCP",
        80,
        frontends=(Frontend("cluster_ip", "10.96.0.9", 80),),
        internal=BackendSet(backends, build_table([b.identity for b in backends])),
    )
    return await intents.put(service_key("d", "web", "TCP", 80, "ipv4"), encode_object(svc))


async def test_kernel_policy_and_default_drop_counters_move_with_real_tcp(
    topo: Topology, stores: tuple[StateStore, StateStore, StateStore]
) -> None:
    intents, k8s, status = stores
    revision = await seed(intents)
    reader = InMemoryMetricReader()
    target = KernelTargetAdapter(netns=topo.node, port_names={p.port: p.ifname for p in topo.pods.values()})
    dp = DatapathService(
        node="n1",
        options=DatapathOptions(
            target="kernel",
            kernel_netns=topo.node,
            routes_from_nodes=False,
            coalesce=0.0,
            status_interval=0.0,
            counter_interval=0.0,  # polled by hand below
        ),
        target=target,
        intents=intents,
        k8s=k8s,
        status=status,
        meter=MeterProvider(metric_readers=[reader]).get_meter("test"),
        ports={f"d/{n}": p for n, p in PORTS.items()},
    )
    stopping = asyncio.Event()
    task = asyncio.create_task(dp.run(stopping))
    try:
        async with asyncio.timeout(WITHIN):
            await dp.wait_converged(revision)
        assert await dp.counters.poll()
        before = {(r.policy, r.verdict): r.packets for r in dp.counters.report().rules}

        # Allowed: through the service (DNAT to web:8080) and directly; denied: web:9999.
        ok = await asyncio.to_thread(topo.connect, "client", [("10.96.0.9", 80), (ADDRS["web"][0], 8080)])
        assert [r.split()[0] for r in ok] == ["OK", "OK"]
        denied = await asyncio.to_thread(topo.connect, "client", [(ADDRS["web"][0], 9999)], timeout=0.5)
        assert denied == ["TIMEOUT"]

        assert await dp.counters.poll()
        entry = await status.get(status_key(node_token("n1")))
        assert entry is not None
        assert entry.value is not None
        report = decode_object(entry.value)
        assert isinstance(report, CounterReport)
        rules = {(r.namespace, r.policy, r.direction, r.verdict): r.packets for r in report.rules}
        allowed = rules[("d", "allow-web", "ingress", "allow")] - before.get(("allow-web", "allow"), 0)
        assert allowed >= 2  # at least the two connections' first packets
        deny = rules[("", DEFAULT_DENY, "ingress", "deny")] - before.get((DEFAULT_DENY, "deny"), 0)
        assert deny >= 1  # the SYN to 9999 (and its retransmissions)
        assert ("d", "(not isolated)", "egress", "allow") in rules  # client's egress is open
        drops = {(d.table, d.reason): d.packets for d in report.drops}
        assert drops[("acl_ingress", "policy_ingress")] >= 1
        assert report.drops_supported

        text = render_prometheus(reader.get_metrics_data())
        assert (
            'xpunet_datapath_policy_packets_total{direction="ingress",namespace="d",policy="allow-web"'
            in text
        )
        assert 'xpunet_datapath_default_drops_total{reason="policy_ingress",table="acl_ingress"}' in text
    finally:
        stopping.set()
        await asyncio.wait_for(task, 20)
