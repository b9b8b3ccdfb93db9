"""Counter statistics on softipu: packets executed by the reference interpreter move the policy,
service and default-drop totals, read over real P4Runtime, published in KV and exported as metrics."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import replace

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from xpunet.bus.api import InSync
from xpunet.bus.nats import NatsBus
from xpunet.ctl.counters import counters
from xpunet.ctl.main import build_parser
from xpunet.datapath.counters import DEFAULT_DENY, CounterReport, status_key
from xpunet.datapath.p4rt_target import P4RuntimeTarget
from xpunet.datapath.service import DatapathOptions, DatapathService
from xpunet.datapath.softipu.execute import PacketExecutor
from xpunet.datapath.testing import PORTS, WITHIN, Buckets, CountingSoftIpu, seed, service, svc_key
from xpunet.ir.keys import node_token
from xpunet.ir.policy import PolicyEndpoint, PolicyRule, PortRange, RuleOrigin, endpoint_key
from xpunet.p4rt.client import ClientSettings
from xpunet.pipeline.interpreter import TCP, TCP_SYN, Drop, Forward, Packet
from xpunet.runtime.metrics_text import render_prometheus
from xpunet.testing.nats import in_background, unique_name
from xpunet.wire import decode_object, encode_object

DB = PolicyEndpoint(
    "shop",
    "db",
    "u2",
    "n1",
    ("10.1.0.11",),
    ingress_isolated=True,
    ingress=(
        PolicyRule(RuleOrigin("shop", "allow-web", "ingress", 0), ports=(PortRange("TCP", 8080, 8080),)),
    ),
)


@contextlib.asynccontextmanager
async def datapath(
    buckets: Buckets, softipu: CountingSoftIpu, reader: InMemoryMetricReader, interval: float = 0.0
) -> AsyncIterator[DatapathService]:
    meter = MeterProvider(metric_readers=[reader]).get_meter("test")
    dp = DatapathService(
        node="n1",
        options=DatapathOptions(coalesce=0.0, status_interval=0.0, counter_interval=interval),
        target=P4RuntimeTarget(ClientSettings(address=f"127.0.0.1:{softipu.port}", reconnect_max=0.2)),
        intents=buckets.intents,
        k8s=buckets.k8s,
        status=buckets.status,
        meter=meter,
        ports=PORTS,
    )
    async with in_background(dp):
        yield dp


async def program(buckets: Buckets) -> int:
    await seed(buckets)
    await buckets.intents.put(endpoint_key("n1", "shop", "db"), encode_object(DB))
    # The service's only backend is db:8080, so its flows cross db's ingress policy.
    return await buckets.intents.put(svc_key(7), encode_object(service(7, "10.96.0.7", ("10.1.0.11",))))


def syn(dst: str, dport: int, sport: int) -> Packet:
    return Packet(PORTS["shop/web"], "10.1.0.10", dst, TCP, sport, dport, TCP_SYN)


async def read_report(buckets: Buckets) -> CounterReport:
    entry = await buckets.status.get(status_key(node_token("n1")))
    assert entry is not None
    assert entry.value is not None
    report = decode_object(entry.value)
    assert isinstance(report, CounterReport)
    return report


async def test_policy_service_and_default_counters_move_with_traffic(
    buckets: Buckets, softipu: CountingSoftIpu
) -> None:
    reader = InMemoryMetricReader()
    revision = await program(buckets)
    async with datapath(buckets, softipu, reader) as dp:
        async with asyncio.timeout(WITHIN):
            await dp.wait_converged(revision)
        executor = PacketExecutor(softipu)
        # web → the service: DNAT to db:8080, allowed by allow-web ingress[0].
        allowed = syn("10.96.0.7", 80, 40000)
        assert isinstance(executor.process(allowed, now=1.0).verdict, Forward)
        # web → db:9999 directly: no rule allows it; acl_ingress's default drops it.
        denied = syn("10.1.0.11", 9999, 40001)
        assert executor.process(denied, now=1.0).verdict == Drop("policy_ingress")
        assert executor.process(syn("10.1.0.11", 9999, 40002), now=1.0).verdict == Drop("policy_ingress")

        assert await dp.counters.poll()
        report = await read_report(buckets)
        rules = {
            (r.namespace, r.policy, r.direction, r.index, r.verdict): (r.packets, r.bytes)
            for r in report.rules
        }
        assert rules[("shop", "allow-web", "ingress", 0, "allow")] == (1, allowed.length)
        assert rules[("", DEFAULT_DENY, "ingress", -1, "deny")] == (2, 2 * denied.length)
        assert ("shop", "(not isolated)", "egress", -1, "allow") in rules  # web's egress is open
        services = {(s.namespace, s.service, s.port): s.packets for s in report.services}
        assert services == {("shop", "svc7", "tcp/80"): 1}
        drops = {(d.table, d.reason): d.packets for d in report.drops}
        assert drops == {("acl_ingress", "policy_ingress"): 2}

        # db's entries deleted and re-added: softipu's counters restart, the totals go on.
        rev = await buckets.intents.put(
            endpoint_key("n1", "shop", "db"), encode_object(replace(DB, ingress_isolated=False, ingress=()))
        )
        async with asyncio.timeout(WITHIN):
            await dp.wait_converged(rev)
        rev = await buckets.intents.put(endpoint_key("n1", "shop", "db"), encode_object(DB))
        async with asyncio.timeout(WITHIN):
            await dp.wait_converged(rev)
        assert isinstance(executor.process(syn("10.1.0.11", 8080, 40003), now=2.0).verdict, Forward)
        assert await dp.counters.poll()
        report = await read_report(buckets)
        again = {(r.policy, r.direction, r.verdict): r.packets for r in report.rules}
        assert again[("allow-web", "ingress", "allow")] == 2
        assert report.polls == 2

        # The metrics show the same totals.
        text = render_prometheus(reader.get_metrics_data())
        assert (
            'xpunet_datapath_policy_packets_total{direction="ingress",namespace="shop",'
            'policy="allow-web",verdict="allow"} 2' in text
        )
        assert (
            'xpunet_datapath_service_packets_total{namespace="shop",port="tcp/80",service="svc7"} 1' in text
        )
        assert 'xpunet_datapath_default_drops_total{reason="policy_ingress",table="acl_ingress"} 2' in text
        assert (
            'xpunet_datapath_policy_packets_total{direction="ingress",namespace="",'
            'policy="(default deny)",verdict="deny"} 2' in text
        )

        # The target goes away: the read fails, is reported, and the totals stay.
        await softipu.stop()
        assert not await dp.counters.poll()
        report = await read_report(buckets)
        assert "counter read" in report.last_error
        assert {(r.policy, r.verdict): r.packets for r in report.rules}[("allow-web", "allow")] == 2


async def test_the_periodic_poll_publishes(buckets: Buckets, softipu: CountingSoftIpu) -> None:
    revision = await program(buckets)
    async with datapath(buckets, softipu, InMemoryMetricReader(), interval=0.05) as dp:
        async with asyncio.timeout(WITHIN):
            await dp.wait_converged(revision)
            PacketExecutor(softipu).process(syn("10.96.0.7", 80, 41000), now=1.0)
            async for item in buckets.status.watch(status_key(node_token("n1"))):
                if isinstance(item, InSync) or item.value is None:
                    continue
                report = decode_object(item.value)
                assert isinstance(report, CounterReport)
                if report.services and report.services[0].packets == 1:
                    break


async def test_xpunetctl_counters_prints_the_nodes_tables(
    bus: NatsBus,
    nats_url: str,
    buckets: Buckets,
    softipu: CountingSoftIpu,
    capsys: pytest.CaptureFixture[str],
) -> None:
    name = unique_name("dpstatus")
    mine = replace(buckets, status=await bus.kv(name))
    revision = await program(mine)
    try:
        async with datapath(mine, softipu, InMemoryMetricReader()) as dp:
            async with asyncio.timeout(WITHIN):
                await dp.wait_converged(revision)
            executor = PacketExecutor(softipu)
            executor.process(syn("10.96.0.7", 80, 42000), now=1.0)
            executor.process(syn("10.1.0.11", 9999, 42001), now=1.0)
            assert await dp.counters.poll()

        def run(*argv: str) -> argparse.Namespace:
            return build_parser().parse_args(["counters", "--nats", nats_url, "--bucket", name, *argv])

        assert await counters([nats_url], run("--node", "n1")) == 0
        out = capsys.readouterr().out
        rows = [line.split() for line in out.splitlines()]
        assert ["shop", "allow-web", "ingress", "allow", "1", str(syn("", 0, 0).length)] in rows
        assert ["-", "(default", "deny)", "ingress", "deny", "1", str(syn("", 0, 0).length)] in rows
        assert ["shop", "svc7", "tcp/80", "1", str(syn("", 0, 0).length)] in rows
        assert ["acl_ingress", "policy_ingress", "1", str(syn("", 0, 0).length)] in rows

        assert await counters([nats_url], run("--rules")) == 0  # every node: n1
        rows = [line.split() for line in capsys.readouterr().out.splitlines()]
        assert ["shop", "allow-web", "ingress", "0", "allow", "1", str(syn("", 0, 0).length)] in rows

        assert await counters([nats_url], run("--node", "elsewhere")) == 1
        assert "no counter report for node elsewhere" in capsys.readouterr().err
    finally:
        await bus.delete_kv(name)
