"""xpunet on real packets: Services (ClusterIP, NodePort, spread, affinity, no endpoints), NetworkPolicy
(both directions, named ports, ipBlock except, matchExpressions, endPort, UDP, SCTP), changes under
established connections, and a restart of the stack (datapaths included) under traffic.

Pods are attached through ``xpunet-cni`` and every node's datapath programs
its namespace with the kernel target.  Where a piece is missing they skip
with the reason ``xpunet.cluster.wiring`` gives.
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

import pytest

from xpunet.cluster import probe
from xpunet.cluster.cluster import LocalCluster
from xpunet.cluster.netns import run
from xpunet.cluster.pods import sctp_supported
from xpunet.cluster.reach import measure
from xpunet.cluster.testing import dataplane_missing, dump, pod, running_cluster
from xpunet.ctl.stack import Stack
from xpunet.embedded.nats import NatsServer

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(
        bool(dataplane_missing()), reason=f"xpunet dataplane not wired: {dataplane_missing()}"
    ),
]

SRV_PORTS: list[dict[str, Any]] = [
    {"name": "http", "containerPort": 8080},
    {"name": "dns", "containerPort": 5353, "protocol": "UDP"},
    {"name": "assoc", "containerPort": 7777, "protocol": "SCTP"},
]


def _service(name: str, ips: list[str], *, port: int = 80, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"namespace": "a", "name": name},
        "spec": {
            "clusterIP": ips[0],
            "clusterIPs": ips,
            "ipFamilies": ["IPv6" if ":" in ip else "IPv4" for ip in ips],
            "selector": spec.pop("selector", {"app": "srv"}),
            "ports": [{"name": "http", "port": port, "targetPort": "http", **spec.pop("port_extra", {})}],
            **spec,
        },
    }


def _namespace(name: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": {"team": name}}}


def _policy(ns: str, name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"namespace": ns, "name": name},
        "spec": spec,
    }


def manifests(tmp_path: Path) -> Path:
    objects = [
        _namespace("a"),
        _namespace("b"),
        pod("a", "srv-1", "node-1", {"app": "srv"}, SRV_PORTS),
        pod("a", "srv-2", "node-2", {"app": "srv"}, SRV_PORTS),
        pod("a", "cli", "node-1", {"app": "cli"}, [{"name": "http", "containerPort": 8080}]),
        pod("b", "cli", "node-2", {"app": "cli"}, [{"name": "http", "containerPort": 8080}]),
        _service("srv", ["10.96.1.10", "fd00:96:1::10"], ipFamilyPolicy="RequireDualStack"),
        _service("srv-np", ["10.96.1.13"], type="NodePort", port_extra={"nodePort": 30090}),
        _service("sticky", ["10.96.1.11"], sessionAffinity="ClientIP"),
        _service("none", ["10.96.1.12"], selector={"app": "nobody"}),
    ]
    directory = tmp_path / "manifests"
    directory.mkdir()
    (directory / "cluster.yaml").write_text(dump(objects))
    return directory


async def _peers(netns: str, ip: str, port: int, count: int) -> list[str]:
    results = await asyncio.gather(*(probe.tcp(netns, ip, port) for _ in range(count)))
    assert all(r.ok for r in results), results
    return [r.peer for r in results]


async def test_services_spread_affinity_nodeport_and_no_endpoints(tmp_path: Path) -> None:
    async with running_cluster(tmp_path, manifests=manifests(tmp_path)) as (cluster, _stack):
        cli = cluster.pod("a/cli")
        # A reply that was not reverse-NATed would never complete the connect to the ClusterIP.
        for family in (4, 6):
            peers = await _peers(cli.netns, cluster.service_ip("a/srv", family), 80, 24)
            assert set(peers) == {"a/srv-1", "a/srv-2"}, f"IPv{family}: {peers}"
        sticky = await _peers(cli.netns, cluster.service_ip("a/sticky"), 80, 10)
        assert len(set(sticky)) == 1, sticky
        for node in cluster.plan.nodes:  # the NodePort on this node and on the other one
            peers = await _peers(cli.netns, node.address4, 30090, 4)
            assert set(peers) <= {"a/srv-1", "a/srv-2"}
        empty = await probe.tcp(cli.netns, cluster.service_ip("a/none"), 80, timeout=2.0)
        assert empty.outcome == "refused", empty  # a reject, not a drop that would time out


async def _converge_and_check(cluster: LocalCluster, stack: Stack) -> None:
    await cluster.wait_converged(stack)
    for family in (4, 6):
        matrix = await measure(cluster, stack.nats_urls, source="tcp", family=family)
        assert matrix.disagreements == [], matrix.disagreements


async def test_network_policy_on_real_packets(tmp_path: Path) -> None:
    async with running_cluster(tmp_path, manifests=manifests(tmp_path)) as (cluster, stack):
        await _converge_and_check(cluster, stack)
        # Ingress default deny in a, then web open to namespace b on the named port only.
        cluster.apply(_policy("a", "deny", {"podSelector": {}, "policyTypes": ["Ingress"]}))
        await _converge_and_check(cluster, stack)
        cluster.apply(
            _policy(
                "a",
                "srv-from-b",
                {
                    "podSelector": {"matchLabels": {"app": "srv"}},
                    "ingress": [
                        {
                            "from": [{"namespaceSelector": {"matchLabels": {"team": "b"}}}],
                            "ports": [{"port": "http"}, {"port": "dns", "protocol": "UDP"}],
                        }
                    ],
                },
            )
        )
        await _converge_and_check(cluster, stack)
        srv = cluster.pod("a/srv-1")
        assert (await probe.udp(cluster.pod("b/cli").netns, srv.ip(4), 5353)).ok
        assert (await probe.udp(cluster.pod("a/cli").netns, srv.ip(4), 5353)).outcome == "timeout"
        # Egress from b: only to 10.244.0.0/16 except node-2's pods, and fd00:10:244::/48.
        cluster.apply(
            _policy(
                "b",
                "egress",
                {
                    "podSelector": {},
                    "policyTypes": ["Egress"],
                    "egress": [
                        {"to": [{"ipBlock": {"cidr": "10.244.0.0/16", "except": ["10.244.2.0/24"]}}]},
                        {"to": [{"ipBlock": {"cidr": "fd00:10:244::/48"}}]},
                    ],
                },
            )
        )
        await _converge_and_check(cluster, stack)
        bcli = cluster.pod("b/cli")
        assert (await probe.tcp(bcli.netns, srv.ip(4), 8080)).ok
        assert (await probe.tcp(bcli.netns, cluster.pod("a/srv-2").ip(4), 8080)).outcome == "timeout"
        # Egress from a/cli: to namespaces matched by an expression, on a port range (endPort).
        acli = cluster.pod("a/cli")

        def cli_egress(first: int, last: int) -> dict[str, Any]:
            to_b = {
                "namespaceSelector": {
                    "matchExpressions": [{"key": "team", "operator": "In", "values": ["b"]}]
                }
            }
            return _policy(
                "a",
                "cli-egress",
                {
                    "podSelector": {"matchLabels": {"app": "cli"}},
                    "policyTypes": ["Egress"],
                    "egress": [
                        {"to": [to_b], "ports": [{"protocol": "TCP", "port": first, "endPort": last}]}
                    ],
                },
            )

        cluster.apply(cli_egress(8000, 8090))
        await _converge_and_check(cluster, stack)
        assert (await probe.tcp(acli.netns, bcli.ip(6), 8080)).ok
        cluster.apply(cli_egress(8081, 8090))  # 8080 falls out of the range
        await _converge_and_check(cluster, stack)
        assert (await probe.tcp(acli.netns, bcli.ip(6), 8080)).outcome == "timeout"


@pytest.mark.skipif(not sctp_supported(), reason="this kernel offers no SCTP sockets (sctp module absent)")
async def test_sctp_policy(tmp_path: Path) -> None:
    async with running_cluster(tmp_path, manifests=manifests(tmp_path)) as (cluster, stack):
        srv = cluster.pod("a/srv-1")
        assert (await probe.tcp(cluster.pod("a/cli").netns, srv.ip(4), 7777, protocol="SCTP")).ok
        cluster.apply(
            _policy(
                "a",
                "sctp-from-b",
                {
                    "podSelector": {"matchLabels": {"app": "srv"}},
                    "ingress": [
                        {
                            "from": [{"namespaceSelector": {"matchLabels": {"team": "b"}}}],
                            "ports": [{"port": "assoc", "protocol": "SCTP"}],
                        }
                    ],
                },
            )
        )
        await cluster.wait_converged(stack)
        assert (await probe.tcp(cluster.pod("b/cli").netns, srv.ip(4), 7777, protocol="SCTP")).ok
        denied = await probe.tcp(cluster.pod("a/cli").netns, srv.ip(4), 7777, protocol="SCTP")
        assert denied.outcome == "timeout"


async def test_changes_apply_to_new_connections_and_spare_established_ones(tmp_path: Path) -> None:
    async with running_cluster(tmp_path, manifests=manifests(tmp_path)) as (cluster, stack):
        cli = cluster.pod("a/cli")
        srv = cluster.pod("a/srv-1")
        result, held = await probe.connect(cli.netns, srv.ip(4), 8080)
        assert held is not None, result
        result, via_service = await probe.connect(cli.netns, cluster.service_ip("a/srv"), 80)
        assert via_service is not None, result
        try:
            cluster.apply(_policy("a", "deny", {"podSelector": {}, "policyTypes": ["Ingress"]}))
            await cluster.wait_converged(stack)
            assert (await probe.tcp(cli.netns, srv.ip(4), 8080)).outcome == "timeout"
            assert await held.echo("still there after the deny")
            cluster.delete(_policy("a", "deny", {}))
            await cluster.wait_converged(stack)
            # Endpoint change: the other backend goes away; new connections avoid it, the old one lives.
            other = "a/srv-2" if via_service.peer == "a/srv-1" else "a/srv-1"
            await cluster.remove_pod(other)
            await cluster.wait_converged(stack)
            peers = await _peers(cli.netns, cluster.service_ip("a/srv"), 80, 8)
            assert set(peers) == {via_service.peer}
            assert await via_service.echo("still there after the endpoint change")
        finally:
            await held.close()
            await via_service.close()


async def _kernel_state(cluster: LocalCluster) -> dict[str, str]:
    """Each node's xpunet routes and nftables table, counter values masked."""
    out: dict[str, str] = {}
    for node in cluster.plan.nodes:
        routes = [await run("ip", f"-{v}", "-n", node.netns, "route", "show", "proto", "93") for v in (4, 6)]
        table = await run("ip", "netns", "exec", node.netns, "nft", "list", "table", "inet", "xpunet")
        out[node.name] = "".join(routes) + re.sub(r"packets \d+ bytes \d+", "", table)
    return out


async def test_stack_restart_under_traffic_keeps_established_connections(tmp_path: Path) -> None:
    nats = NatsServer(name="e2e-restart")
    await nats.astart()
    try:
        async with running_cluster(tmp_path, manifests=manifests(tmp_path), nats=nats) as (cluster, stack):
            cli = cluster.pod("a/cli")
            result, held = await probe.connect(cli.netns, cluster.service_ip("a/srv"), 80)
            assert held is not None, result
            try:
                before = await _kernel_state(cluster)
                await stack.stop()  # every service, the datapaths included; the kernel keeps its state
                assert await held.echo("while the datapaths are down")
                again = Stack(stack.options)
                await again.start()
                try:
                    assert await again.wait_ready()
                    await cluster.wait_converged(again)
                    # Same pods, same ports (numbered from their veths' names): nothing rewritten.
                    assert await _kernel_state(cluster) == before
                    assert await held.echo("after the restart")
                    assert (await probe.tcp(cli.netns, cluster.service_ip("a/srv"), 80)).ok
                finally:
                    await again.stop()
            finally:
                await held.close()
    finally:
        await nats.astop()
