"""``xpunetctl trace`` against a real nats-server: objects and intents in KV, the walk printed."""

from __future__ import annotations

import argparse
from collections.abc import AsyncIterator

import pytest

from xpunet.bus.nats import NatsBus
from xpunet.ctl.main import build_parser
from xpunet.ctl.trace import trace
from xpunet.ir.lb import LB_SERVICE_SCHEMA, Backend, BackendSet, Frontend, LbServicePort
from xpunet.ir.policy import POLICY_EP_SCHEMA, POLICY_IPSET_SCHEMA
from xpunet.lb.maglev import build_table
from xpunet.model.objects import (
    ContainerPort,
    Labels,
    LabelSelector,
    Namespace,
    NetworkPolicy,
    NetworkPolicyPeer,
    NetworkPolicyPort,
    NetworkPolicyRule,
    Node,
    NodeAddress,
    Pod,
    Service,
    ServicePort,
)
from xpunet.policy.compiler import PolicyCompiler
from xpunet.testing.nats import unique_name
from xpunet.wire import encode, encode_object

NODES = (
    Node("n1", addresses=(NodeAddress("InternalIP", "192.168.0.1"),), pod_cidrs=("10.0.1.0/24",)),
    Node("n2", addresses=(NodeAddress("InternalIP", "192.168.0.2"),), pod_cidrs=("10.0.2.0/24",)),
)
CLIENT = Pod("d", "client", "u1", "n1", ("10.0.1.2",), Labels({"app": "client"}), phase="Running", ready=True)
WEB = Pod(
    "d",
    "web-0",
    "u2",
    "n2",
    ("10.0.2.3",),
    Labels({"app": "web"}),
    (ContainerPort(8080, "TCP", "http"),),
    "Running",
    True,
)
POLICY = NetworkPolicy(
    "d",
    "web-from-client",
    pod_selector=LabelSelector(Labels({"app": "web"})),
    ingress=(
        NetworkPolicyRule(
            (NetworkPolicyPort("TCP", "http"),),
            (NetworkPolicyPeer(pod_selector=LabelSelector(Labels({"app": "client"}))),),
        ),
    ),
)
SERVICE = Service("d", "web", cluster_ips=("10.96.0.9",), ports=(ServicePort(443, "TCP", target_port=8080),))
BACKENDS = (Backend("10.0.2.3", 8080),)
LB = LbServicePort(
    9,
    "d",
    "web",
    "ipv4",
    "TCP",
    443,
    frontends=(Frontend("cluster_ip", "10.96.0.9", 443),),
    internal=BackendSet(BACKENDS, build_table([b.identity for b in BACKENDS])),
)


@pytest.fixture
async def buckets(bus: NatsBus) -> AsyncIterator[tuple[str, str]]:
    k8s_name, intent_name = unique_name("k8s"), unique_name("intent")
    k8s, intents = await bus.kv(k8s_name), await bus.kv(intent_name)
    for obj in (*NODES, CLIENT, WEB, SERVICE, Namespace("d", Labels({"kubernetes.io/metadata.name": "d"}))):
        ns = getattr(obj, "namespace", None)
        key = f"{obj.kind.value}.{ns}.{obj.name}" if ns else f"{obj.kind.value}.{obj.name}"
        await k8s.put(key, encode_object(obj))
    compiler = PolicyCompiler()
    for pod in (CLIENT, WEB):
        compiler.upsert_pod(pod)
    compiler.upsert_policy(POLICY)
    compiler.flush()
    for key, value in compiler.intents.items():
        schema = POLICY_EP_SCHEMA if ".policy.ep." in key else POLICY_IPSET_SCHEMA
        await intents.put(key, encode(schema, value))
    await intents.put("global.lb.svc.d.web.tcp-443.ipv4", encode(LB_SERVICE_SCHEMA, LB))
    yield k8s_name, intent_name
    await bus.delete_kv(k8s_name)
    await bus.delete_kv(intent_name)


def args(nats_url: str, buckets: tuple[str, str], *argv: str) -> argparse.Namespace:
    return build_parser().parse_args(
        ["trace", "--nats", nats_url, "--k8s-bucket", buckets[0], "--intent-bucket", buckets[1], *argv]
    )


async def test_trace_pod_to_service_across_nodes(
    nats_url: str, buckets: tuple[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    rc = await trace([nats_url], args(nats_url, buckets, "--from", "d/client", "--to", "svc/d/web:443"))
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "node n1: 10.0.1.2:40000 → 10.96.0.9:443 tcp [SYN]" in out
    assert "service_frontend_v4" in out
    assert "9 (d/web tcp/443)" in out
    assert "TO NODE n2" in out
    assert "DNAT 10.96.0.9:443 → 10.0.2.3:8080" in out
    assert "node n2: 10.0.1.2:40000 → 10.0.2.3:8080" in out
    assert out.rstrip().endswith("conntrack new")
    assert "FORWARD out port" in out
    assert "(d/web-0)" in out


async def test_trace_denied_by_policy(
    nats_url: str, buckets: tuple[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    rc = await trace([nats_url], args(nats_url, buckets, "--from", "d/client", "--to", "d/web-0:9999/tcp"))
    out = capsys.readouterr().out
    assert rc == 0
    assert "acl_ingress" in out
    assert out.rstrip().endswith("verdict: DROP (policy ingress)")


async def test_trace_unknown_pod_is_a_clear_error(
    nats_url: str, buckets: tuple[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    rc = await trace([nats_url], args(nats_url, buckets, "--from", "d/nope", "--to", "d/web-0:80"))
    assert rc == 2
    assert "pod d/nope not found" in capsys.readouterr().err
