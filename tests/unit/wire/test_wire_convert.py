"""to_wire/from_wire: round trips for every model class and every supported type, and bad shapes.

Throughput is measured by ``bench/wire.py`` (``.venv/bin/python bench/wire.py --quick``),
which prints encode/decode objects per second for pods and policies.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from xpunet.model import (
    EMPTY_LABELS,
    PROTOCOLS,
    ContainerPort,
    Endpoint,
    EndpointPort,
    EndpointSlice,
    IPBlock,
    K8sObject,
    Labels,
    LabelSelector,
    LabelSelectorRequirement,
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
    parse_object,
)
from xpunet.model.samples import ALL
from xpunet.wire import WireError, decode_object, encode_object, from_wire, to_wire

# --- strategies for the model ------------------------------------------------------------

names = st.from_regex(r"[a-z0-9]([-a-z0-9]{0,10}[a-z0-9])?", fullmatch=True)
text = st.text(max_size=8)
ips = st.ip_addresses().map(str)
cidrs = st.sampled_from(["10.0.0.0/8", "192.168.4.0/24", "fd00::/64", "0.0.0.0/0"])
labels = st.dictionaries(names, names | st.just(""), max_size=4).map(Labels)
protocols = st.sampled_from(PROTOCOLS)
ports = st.integers(1, 65535)


def opt(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.none() | strategy


def tuples(strategy: st.SearchStrategy[Any], max_size: int = 3) -> st.SearchStrategy[tuple[Any, ...]]:
    return st.lists(strategy, max_size=max_size).map(tuple)


pods = st.builds(
    Pod,
    namespace=names,
    name=names,
    uid=text,
    node=opt(names),
    ips=tuples(ips, 2),
    labels=labels,
    ports=tuples(st.builds(ContainerPort, port=ports, protocol=protocols, name=opt(names))),
    phase=st.sampled_from(["Pending", "Running", "Succeeded", "Failed", "Unknown"]),
    ready=st.booleans(),
    host_network=st.booleans(),
)
namespaces = st.builds(Namespace, name=names, labels=labels)
nodes = st.builds(
    Node,
    name=names,
    uid=text,
    addresses=tuples(st.builds(NodeAddress, type=st.sampled_from(["InternalIP", "Hostname"]), address=ips)),
    pod_cidrs=tuples(cidrs, 2),
    labels=labels,
)
services = st.builds(
    Service,
    namespace=names,
    name=names,
    uid=text,
    type=st.sampled_from(["ClusterIP", "NodePort", "LoadBalancer", "ExternalName"]),
    cluster_ips=tuples(ips, 2),
    headless=st.booleans(),
    ports=tuples(
        st.builds(
            ServicePort,
            port=ports,
            protocol=protocols,
            name=opt(names),
            target_port=st.none() | ports | names,
            node_port=opt(ports),
        )
    ),
    selector=opt(labels),
    external_ips=tuples(ips),
    load_balancer_ips=tuples(ips),
    session_affinity=st.sampled_from(["None", "ClientIP"]),
    session_affinity_timeout=st.integers(1, 86400),
    external_traffic_policy=st.sampled_from(["Cluster", "Local"]),
    internal_traffic_policy=st.sampled_from(["Cluster", "Local"]),
    traffic_distribution=opt(st.just("PreferClose")),
    external_name=opt(names),
    ip_families=tuples(st.sampled_from(["IPv4", "IPv6"]), 2),
)
endpoint_slices = st.builds(
    EndpointSlice,
    namespace=names,
    name=names,
    service=opt(names),
    address_type=st.sampled_from(["IPv4", "IPv6", "FQDN"]),
    endpoints=tuples(
        st.builds(
            Endpoint,
            addresses=tuples(ips, 2),
            ready=st.booleans(),
            serving=st.booleans(),
            terminating=st.booleans(),
            node_name=opt(names),
            zone=opt(names),
            hints_for_zones=tuples(names),
            hints_for_nodes=tuples(names),
            target_ref=opt(st.builds(lambda a, b: f"{a}/{b}", names, names)),
        ),
        4,
    ),
    ports=tuples(st.builds(EndpointPort, port=ports, protocol=protocols, name=opt(names))),
)
requirements = st.builds(
    LabelSelectorRequirement,
    key=names,
    operator=st.sampled_from(["In", "NotIn", "Exists", "DoesNotExist"]),
    values=tuples(names),
)
selectors = st.builds(LabelSelector, match_labels=labels, match_expressions=tuples(requirements, 2))
peers = st.one_of(
    st.builds(NetworkPolicyPeer, pod_selector=opt(selectors), namespace_selector=opt(selectors)),
    st.builds(NetworkPolicyPeer, ip_block=st.builds(IPBlock, cidr=cidrs, except_=tuples(cidrs, 2))),
)
rules = st.builds(
    NetworkPolicyRule,
    ports=tuples(
        st.builds(NetworkPolicyPort, protocol=protocols, port=st.none() | ports | names, end_port=opt(ports))
    ),
    peers=tuples(peers),
)
network_policies = st.builds(
    NetworkPolicy,
    namespace=names,
    name=names,
    uid=text,
    pod_selector=selectors,
    policy_types=st.sampled_from([("Ingress",), ("Egress",), ("Ingress", "Egress")]),
    ingress=tuples(rules),
    egress=tuples(rules),
)
k8s_objects = st.one_of(pods, namespaces, nodes, services, endpoint_slices, network_policies)
ROUND_TRIP = settings(max_examples=150, deadline=None)


@ROUND_TRIP
@given(obj=k8s_objects)
def test_model_objects_round_trip_through_wire_maps(obj: K8sObject) -> None:
    wire = to_wire(obj)
    assert from_wire(type(obj), wire) == obj
    assert to_wire(from_wire(type(obj), wire)) == wire


@ROUND_TRIP
@given(obj=k8s_objects)
def test_model_objects_round_trip_through_msgpack(obj: K8sObject) -> None:
    decoded = decode_object(encode_object(obj))
    assert decoded == obj
    assert type(decoded) is type(obj)


@pytest.mark.parametrize("kind", sorted(ALL))
def test_parsed_samples_round_trip(kind: str) -> None:
    obj = parse_object(ALL[kind])
    assert decode_object(encode_object(obj)) == obj


def test_equal_objects_give_equal_bytes_whatever_the_label_order() -> None:
    a = Pod("ns", "p", "u", labels=Labels({"a": "1", "b": "2"}))
    b = Pod("ns", "p", "u", labels=Labels({"b": "2", "a": "1"}))
    assert encode_object(a) == encode_object(b)


def test_wire_maps_of_the_model_are_plain_data() -> None:
    wire = to_wire(parse_object(ALL["networkpolicy"]))
    rule = wire["ingress"][0]
    assert rule["peers"][3] == {
        "pod_selector": None,
        "namespace_selector": None,
        "ip_block": {"cidr": "172.17.0.0/16", "except_": ["172.17.1.0/24"]},
    }
    assert wire["pod_selector"]["match_labels"] == {"app": "web"}


# --- the generic converter, on dataclasses like the ones in xpunet.ir ----------------------


class Action(enum.StrEnum):
    ALLOW = "allow"
    DENY = "deny"


class Level(enum.IntEnum):
    LOW = 1
    HIGH = 2


@dataclass(frozen=True, slots=True)
class Leaf:
    value: int
    note: str | None = None


@dataclass(frozen=True, slots=True)
class Other:
    weight: float = 1.0


@dataclass(frozen=True, slots=True)
class Tree:
    name: str
    children: tuple[Tree, ...] = ()


@dataclass(frozen=True, slots=True)
class Everything:
    action: Action
    level: Level
    mode: Literal["fast", "slow"]
    ratio: float
    blob: bytes
    flag: bool
    pair: tuple[int, str]
    tags: frozenset[str]
    counts: Mapping[str, int]
    leaves: tuple[Leaf, ...]
    maybe_leaf: Leaf | None
    number_or_name: int | str
    either: Leaf | Other
    tree: Tree
    labels: Labels = EMPTY_LABELS
    renamed: int = field(default=0, metadata={"wire": "r"})
    items: tuple[Mapping[str, Leaf], ...] = ()


int64 = st.integers(-(2**63), 2**63 - 1)  # msgpack's integer range
leaves = st.builds(Leaf, value=int64, note=opt(st.text(max_size=5)))
trees = st.recursive(
    st.builds(Tree, name=st.text(max_size=3)),
    lambda inner: st.builds(Tree, name=st.text(max_size=3), children=tuples(inner)),
    max_leaves=6,
)
everything = st.builds(
    Everything,
    action=st.sampled_from(Action),
    level=st.sampled_from(Level),
    mode=st.sampled_from(["fast", "slow"]),
    ratio=st.floats(allow_nan=False),
    blob=st.binary(max_size=8),
    flag=st.booleans(),
    pair=st.tuples(int64, st.text(max_size=4)),
    tags=st.frozensets(st.text(max_size=4), max_size=4),
    counts=st.dictionaries(st.text(max_size=4), int64, max_size=3),
    leaves=tuples(leaves),
    maybe_leaf=opt(leaves),
    number_or_name=int64 | st.text(max_size=4),
    either=leaves | st.builds(Other, weight=st.floats(allow_nan=False)),
    tree=trees,
    labels=labels,
    renamed=int64,
    items=tuples(st.dictionaries(st.text(max_size=3), leaves, max_size=2)),
)


@ROUND_TRIP
@given(obj=everything)
def test_every_supported_type_round_trips(obj: Everything) -> None:
    from xpunet.wire import decode_as, encode

    assert from_wire(Everything, to_wire(obj)) == obj
    assert decode_as(Everything, encode("test.everything", obj)) == obj


def test_wire_forms_of_the_supported_types() -> None:
    obj = Everything(
        action=Action.DENY,
        level=Level.HIGH,
        mode="slow",
        ratio=0.5,
        blob=b"\x00",
        flag=True,
        pair=(1, "a"),
        tags=frozenset({"b", "a"}),
        counts={"z": 1, "a": 2},
        leaves=(Leaf(1),),
        maybe_leaf=None,
        number_or_name="x",
        either=Other(),
        tree=Tree("root", (Tree("kid"),)),
        renamed=7,
    )
    wire = to_wire(obj)
    assert (wire["action"], wire["level"]) == ("deny", 2)
    assert wire["tags"] == ["a", "b"]
    assert list(wire["counts"]) == ["a", "z"]  # sorted: stable bytes
    assert wire["either"] == {"weight": 1.0, "_t": "Other"}
    assert wire["tree"] == {"name": "root", "children": [{"name": "kid", "children": []}]}
    assert wire["r"] == 7
    assert "renamed" not in wire
    assert list(wire) == [f.metadata.get("wire", f.name) for f in dataclasses.fields(Everything)]


def test_unknown_fields_are_ignored_and_missing_ones_defaulted() -> None:
    assert from_wire(Leaf, {"value": 3, "future_field": [1, 2]}) == Leaf(3)
    assert from_wire(Service, {"namespace": "a", "name": "b"}) == Service("a", "b")
    assert from_wire(Other, {}) == Other()


P = {"namespace": "a", "name": "b", "uid": "c"}  # a Pod's required fields
S = {"namespace": "a", "name": "b"}
BAD_SHAPES = [
    pytest.param(Leaf, {}, "value", "is required", id="missing-required"),
    pytest.param(Leaf, {"value": "1"}, "value", "expected int, got str", id="str-for-int"),
    pytest.param(Leaf, {"value": True}, "value", "expected int, got bool", id="bool-for-int"),
    pytest.param(Leaf, {"value": 1, "note": 5}, "note", "expected str", id="int-for-optional-str"),
    pytest.param(Leaf, [1], "", "expected a map for Leaf", id="list-for-class"),
    pytest.param(Pod, {**P, "ips": "10.0.0.1"}, "ips", "expected a list", id="str-for-tuple"),
    pytest.param(Pod, {**P, "ips": ["x", 5]}, "ips[1]", "expected str", id="bad-tuple-item"),
    pytest.param(Pod, {**P, "labels": {"a": 1}}, "labels", "str to str", id="bad-labels"),
    pytest.param(Pod, {**P, "ports": [{"port": 1, "protocol": "ICMP"}]}, "ports[0].protocol", "is not one of",
                 id="bad-literal"),
    pytest.param(Pod, {**P, "ports": [{}]}, "ports[0].port", "is required", id="nested-missing"),
    pytest.param(Service, {**S, "ports": [{"port": 1, "target_port": 1.5}]}, "ports[0].target_port",
                 "expected", id="bad-union"),
    pytest.param(NetworkPolicy, {**S, "pod_selector": {"match_expressions": [{"key": "k", "operator": "X"}]}},
                 "pod_selector.match_expressions[0].operator", "is not one of", id="deep-path"),
    pytest.param(Everything, {"action": "maybe"}, "action", "not a valid Action", id="bad-enum"),
    pytest.param(Tree, {"name": "a", "children": [{"name": "b", "children": [{"name": 1}]}]},
                 "children[0].children[0].name", "expected str", id="recursive-path"),
]  # fmt: skip


@pytest.mark.parametrize(("cls", "data", "path", "problem"), BAD_SHAPES)
def test_bad_shapes_raise_wire_error_naming_class_and_field(
    cls: type[Any], data: Any, path: str, problem: str
) -> None:
    with pytest.raises(WireError) as info:
        from_wire(cls, data)
    assert info.value.cls == cls.__qualname__
    assert info.value.field == path
    assert problem in info.value.problem


@dataclass(frozen=True, slots=True)
class Holder:
    either: Leaf | Other


def test_union_of_dataclasses_is_decoded_by_its_tag() -> None:
    assert from_wire(Holder, {"either": {"value": 1, "_t": "Leaf"}}) == Holder(Leaf(1))
    assert from_wire(Holder, {"either": {"value": 1, "_t": "Other"}}) == Holder(Other())
    with pytest.raises(WireError, match="'_t' tag") as info:
        from_wire(Holder, {"either": {"value": 1}})
    assert info.value.field == "either"


def test_unsupported_types_fail_when_the_class_is_first_used() -> None:
    @dataclass(frozen=True)
    class Bad:
        things: set[int]

    with pytest.raises(TypeError, match=r"Bad\.things: unsupported type"):
        to_wire(Bad({1}))


def test_non_dataclasses_are_rejected() -> None:
    with pytest.raises(TypeError, match="not a dataclass"):
        to_wire(object())


def test_integers_beyond_msgpack_range_fail_to_encode_with_a_wire_error() -> None:
    from xpunet.wire import encode

    with pytest.raises(WireError, match="cannot encode"):
        encode("test.leaf", Leaf(2**64))


def test_class_validation_errors_become_wire_errors() -> None:
    @dataclass(frozen=True)
    class Positive:
        n: int

        def __post_init__(self) -> None:
            if self.n <= 0:
                raise ValueError("n must be positive")

    with pytest.raises(WireError, match="n must be positive"):
        from_wire(Positive, {"n": 0})


# --- generated code vs the plan interpreter ------------------------------------------------
#
# Every class's codec is also compiled to straight-line code (xpunet.wire._codegen).  It must
# give exactly what the interpreter gives: equal objects, equal maps in equal key order, and
# the same WireError for a damaged map; and valid maps must never need the interpreter.

junk = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-3, 70_000)
    | st.floats(allow_nan=False)
    | st.text(max_size=4)
    | st.binary(max_size=3)
    | st.sampled_from(["TCP", "Ingress", "IPv4", "Leaf", "Other", "allow"]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=6,
)
AGREE = settings(max_examples=200, deadline=None)


def _fallbacks() -> int:
    from xpunet.wire.convert import _CODECS

    return sum(codec.fallbacks for codec in _CODECS.values())


def _outcome(decode: Any, cls: type[Any], data: Any) -> tuple[str, Any]:
    try:
        return ("ok", decode(cls, data))
    except WireError as exc:
        return ("wire error", (exc.cls, exc.field, exc.problem))
    except Exception as exc:  # must not happen, but then both paths must fail alike
        return (type(exc).__name__, str(exc))


def _places(value: Any, out: list[tuple[Any, Any]]) -> list[tuple[Any, Any]]:
    """Every (container, key or index) inside a wire map, to damage one of them."""
    if isinstance(value, dict):
        for k, v in value.items():
            out.append((value, k))
            _places(v, out)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out.append((value, i))
            _places(v, out)
    return out


@AGREE
@given(obj=k8s_objects | everything)
def test_generated_codecs_match_the_interpreter_on_valid_objects(obj: Any) -> None:
    from xpunet.wire import decode, encode
    from xpunet.wire.convert import from_wire_reference, to_wire_reference

    cls = type(obj)
    before = _fallbacks()
    wire = to_wire(obj)
    assert repr(wire) == repr(to_wire_reference(obj))  # same values, same key order
    assert from_wire(cls, wire) == from_wire_reference(cls, wire) == obj
    _, body = decode(encode("test.any", obj))  # msgpack gives tuples where to_wire gave lists
    assert from_wire(cls, body) == from_wire_reference(cls, body) == obj
    assert _fallbacks() == before, "the generated decoder handed a valid map to the interpreter"


@AGREE
@given(obj=k8s_objects | everything, data=st.data())
def test_generated_decoders_match_the_interpreter_on_damaged_maps(obj: Any, data: st.DataObject) -> None:
    from xpunet.wire.convert import from_wire_reference

    wire = to_wire(obj)
    for _ in range(data.draw(st.integers(1, 3), label="damages")):
        places = _places(wire, [])
        if not places:
            break
        container, key = places[data.draw(st.integers(0, len(places) - 1), label="place")]
        if isinstance(container, dict) and data.draw(st.booleans(), label="delete"):
            del container[key]
        else:
            container[key] = data.draw(junk, label="junk")
    cls = type(obj)
    assert _outcome(from_wire, cls, wire) == _outcome(from_wire_reference, cls, wire)


@AGREE
@given(
    cls=st.sampled_from(
        [Pod, Service, EndpointSlice, NetworkPolicy, Node, Namespace, Everything, Tree, Leaf]
    ),
    data=junk,
)
def test_generated_decoders_match_the_interpreter_on_junk(cls: type[Any], data: Any) -> None:
    from xpunet.wire.convert import from_wire_reference

    assert _outcome(from_wire, cls, data) == _outcome(from_wire_reference, cls, data)


def test_generated_code_is_built_from_field_metadata_only() -> None:
    from xpunet.wire.convert import _CODECS

    from_wire(Everything, to_wire(Everything(
        action=Action.ALLOW, level=Level.LOW, mode="fast", ratio=1.0, blob=b"", flag=False, pair=(1, "a"),
        tags=frozenset(), counts={}, leaves=(), maybe_leaf=None, number_or_name=1, either=Leaf(1),
        tree=Tree("t"),
    )))  # fmt: skip
    source = _CODECS[Everything].source
    # Keys appear as literals; converters, defaults and classes only as generated names.
    assert "'r'" in source
    assert "obj.renamed" in source
    assert "Leaf" not in source
    assert "EMPTY_LABELS" not in source


def test_a_post_init_still_runs_on_the_generated_path() -> None:
    @dataclass(frozen=True, slots=True)
    class Checked:
        n: int

        def __post_init__(self) -> None:
            if self.n > 9:
                raise ValueError("n is a digit")

    assert from_wire(Checked, {"n": 3}) == Checked(3)
    with pytest.raises(WireError, match="n is a digit"):
        from_wire(Checked, {"n": 10})
