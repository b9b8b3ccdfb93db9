"""Replays of the same updates (in order, flushed one by one, squashed and reversed) agree."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from xpunet.lb.state import LbCompiler
from xpunet.model.objects import (
    ZONE_LABEL,
    Endpoint,
    EndpointPort,
    EndpointSlice,
    Kind,
    Labels,
    Node,
    NodeAddress,
    Service,
    ServicePort,
)

Obj = Service | EndpointSlice | Node
Event = tuple[tuple[Kind, str | None, str], Obj | None]

NODES = ("n0", "n1", "n2")
ZONES = ("a", "b")

services = st.builds(
    lambda name, ports, etp, itp, typ, affinity: Service(
        namespace="default",
        name=name,
        type=typ,
        cluster_ips=("10.96.0.1",) if name == "s0" else ("10.96.0.2", "fd00::2"),
        ports=ports,
        selector=Labels({"app": name}),
        external_traffic_policy=etp,
        internal_traffic_policy=itp,
        session_affinity=affinity,
    ),
    st.sampled_from(("s0", "s1")),
    st.lists(
        st.sampled_from(
            (
                ServicePort(80, name="http", node_port=30080),
                ServicePort(53, protocol="UDP", name="dns"),
                ServicePort(443, name="tls"),
            )
        ),
        min_size=1,
        max_size=3,
        unique=True,
    ).map(tuple),
    st.sampled_from(("Cluster", "Local")),
    st.sampled_from(("Cluster", "Local")),
    st.sampled_from(("ClusterIP", "NodePort")),
    st.sampled_from(("None", "ClientIP")),
)

endpoints = st.builds(
    lambda ip, ready, serving, terminating, node, hint: Endpoint(
        addresses=(ip,),
        ready=ready,
        serving=serving or ready,
        terminating=terminating,
        node_name=node,
        zone=None,
        hints_for_zones=hint,
    ),
    st.sampled_from(("10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4", "10.0.0.bad")),
    st.booleans(),
    st.booleans(),
    st.booleans(),
    st.sampled_from(NODES),
    st.sampled_from(((), ("a",), ("b",))),
)

slices = st.builds(
    lambda name, svc, eps, port: EndpointSlice(
        namespace="default",
        name=name,
        service=svc,
        address_type="IPv4",
        endpoints=tuple(eps),
        ports=(EndpointPort(port, name="http"), EndpointPort(5353, protocol="UDP", name="dns")),
    ),
    st.sampled_from(("e0", "e1", "e2")),
    st.sampled_from(("s0", "s1")),
    st.lists(endpoints, max_size=4),
    st.sampled_from((8080, 9090)),
)

nodes = st.builds(
    lambda name, zone: Node(
        name=name,
        addresses=(NodeAddress("InternalIP", f"172.16.0.{NODES.index(name) + 1}"),),
        labels=Labels({ZONE_LABEL: zone}),
    ),
    st.sampled_from(NODES),
    st.sampled_from(ZONES),
)


def ref(obj: Obj) -> tuple[Kind, str | None, str]:
    if isinstance(obj, Node):
        return (Kind.NODE, None, obj.name)
    return (obj.kind, obj.namespace, obj.name)


@st.composite
def events(draw: st.DrawFn) -> list[Event]:
    out: list[Event] = []
    for obj in draw(st.lists(st.one_of(services, slices, nodes), min_size=1, max_size=14)):
        out.append((ref(obj), obj))
        if draw(st.integers(0, 5)) == 0:
            out.append((ref(obj), None))
    return out


def apply(c: LbCompiler, event: Event) -> None:
    (kind, ns, name), obj = event
    if obj is None:
        c.delete(kind, ns, name)
    else:
        c.update(obj)


@settings(max_examples=60, deadline=None)
@given(events())
def test_order_split_squash_replays_agree(evs: list[Event]) -> None:
    together = LbCompiler()
    for e in evs:
        apply(together, e)
    together.flush()

    split = LbCompiler()
    for e in evs:
        apply(split, e)
        split.flush()

    final: dict[tuple[Kind, str | None, str], Obj | None] = {}
    for key, obj in evs:
        final[key] = obj
    squashed = LbCompiler()
    for _key, obj in reversed(list(final.items())):
        if obj is not None:
            squashed.update(obj)
    squashed.flush()

    assert dict(split.intents()) == dict(together.intents())
    assert dict(squashed.intents()) == dict(together.intents())
    assert dict(split.rejections()) == dict(together.rejections())
    assert dict(squashed.rejections()) == dict(together.rejections())


@settings(max_examples=30, deadline=None)
@given(events())
def test_split_flushes_sum_to_the_final_state(evs: list[Event]) -> None:
    """Applying every flush's changes to a copy of KV gives the compiler's own view (no missed delete)."""
    c = LbCompiler()
    kv: dict[str, object] = {}
    for e in evs:
        apply(c, e)
        for key, value in c.flush().intents.items():
            if value is None:
                kv.pop(key, None)
            else:
                kv[key] = value
    assert kv == dict(c.intents())
