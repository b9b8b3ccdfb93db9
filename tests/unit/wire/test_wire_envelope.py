"""The msgpack envelope: format, version tolerance, the schema registry, and hostile bytes."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from xpunet.model import Pod, Service, parse_object
from xpunet.model.samples import ALL
from xpunet.wire import (
    K8S_SCHEMAS,
    SCHEMA_VERSION,
    WireError,
    decode,
    decode_as,
    decode_k8s,
    decode_object,
    encode,
    encode_object,
    register,
    schema_of,
    to_wire,
)

POD = parse_object(ALL["pod"])


def pack(msg: Any) -> bytes:
    data: bytes = msgpack.packb(msg, use_bin_type=True)
    return data


def test_envelope_format() -> None:
    raw = msgpack.unpackb(encode_object(POD), raw=False)
    assert set(raw) == {"v", "t", "o"}
    assert raw["v"] == SCHEMA_VERSION
    assert raw["t"] == "k8s.pod"
    assert raw["o"]["name"] == "web-0"


def test_k8s_kinds_are_registered_by_kind_name() -> None:
    assert {schema_of(cls) for cls in K8S_SCHEMAS} == {f"k8s.{kind}" for kind in ALL}
    for kind, obj in ALL.items():
        assert schema_of(type(parse_object(obj))) == f"k8s.{kind}"


def test_decode_returns_schema_and_map() -> None:
    schema, body = decode(encode("k8s.pod", POD))
    assert schema == "k8s.pod"
    assert body["namespace"] == "shop"


def test_decode_as_checks_the_schema_of_registered_classes() -> None:
    assert decode_as(Pod, encode_object(POD)) == POD
    with pytest.raises(WireError, match=r"expected 'k8s\.service'"):
        decode_as(Service, encode_object(POD))


def test_decode_k8s_accepts_only_kubernetes_kinds() -> None:
    assert decode_k8s(encode_object(POD)) == POD

    @dataclass(frozen=True)
    class Note:
        text: str = ""

    register("test.note", Note)
    with pytest.raises(WireError, match="not a Kubernetes object"):
        decode_k8s(encode("test.note", Note("hi")))


def test_newer_writers_are_tolerated() -> None:
    body = {"namespace": "a", "name": "b", "uid": "c", "added_in_v2": {"x": [1, 2]}}
    msg = pack({"v": SCHEMA_VERSION + 1, "t": "k8s.pod", "o": body, "trace": "later"})
    assert decode_object(msg) == Pod("a", "b", "c")


def test_an_already_built_wire_map_can_be_sent() -> None:
    assert decode_object(encode("k8s.pod", {"namespace": "a", "name": "b", "uid": "c"})) == Pod("a", "b", "c")


BAD_ENVELOPES = [
    pytest.param(b"", "not a valid msgpack", id="empty"),
    pytest.param(b"\xc1", "not a valid msgpack", id="reserved-byte"),
    pytest.param(pack([1, 2]), "expected a map", id="array"),
    pytest.param(pack({"t": "k8s.pod", "o": {}}), "schema version", id="no-version"),
    pytest.param(pack({"v": "1", "t": "k8s.pod", "o": {}}), "schema version", id="version-string"),
    pytest.param(pack({"v": 0, "t": "k8s.pod", "o": {}}), "schema version", id="version-zero"),
    pytest.param(pack({"v": True, "t": "k8s.pod", "o": {}}), "schema version", id="version-bool"),
    pytest.param(pack({"v": 1, "o": {}}), "schema name", id="no-schema"),
    pytest.param(pack({"v": 1, "t": "", "o": {}}), "schema name", id="empty-schema"),
    pytest.param(pack({"v": 1, "t": "k8s.pod"}), "object map", id="no-body"),
    pytest.param(pack({"v": 1, "t": "k8s.pod", "o": [1]}), "object map", id="body-array"),
    pytest.param(pack({1: 2}), "not a valid msgpack", id="int-keys"),
    pytest.param(
        pack({"v": 1, "t": "k8s.pod", "o": {}}) + b"\x00", "not a valid msgpack", id="trailing-bytes"
    ),
    pytest.param(pack({"v": 1, "t": "k8s.nope", "o": {}}), "unknown schema", id="unknown-schema"),
    pytest.param(pack({"v": 1, "t": "k8s.pod", "o": {"name": "b"}}), "is required", id="missing-field"),
]


@pytest.mark.parametrize(("data", "problem"), BAD_ENVELOPES)
def test_bad_envelopes_raise_wire_error(data: bytes, problem: str) -> None:
    with pytest.raises(WireError, match=problem):
        decode_object(data)


@pytest.mark.parametrize("kind", sorted(ALL))
def test_every_truncation_raises_wire_error(kind: str) -> None:
    data = encode_object(parse_object(ALL[kind]))
    for cut in range(len(data)):
        with pytest.raises(WireError):
            decode_object(data[:cut])


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=64))
def test_garbage_bytes_raise_only_wire_error(data: bytes) -> None:
    try:
        decode_object(data)
    except WireError:
        return


JSONISH = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats()
    | st.text(max_size=5)
    | st.binary(max_size=3),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)
FIELD_NAMES = st.sampled_from(
    ["namespace", "name", "uid", "ips", "labels", "ports", "port", "protocol", "endpoints", "addresses",
     "ingress", "egress", "peers", "pod_selector", "ip_block", "cidr", "match_labels", "match_expressions",
     "operator", "values", "selector", "address_type", "policy_types", "target_port"]
)  # fmt: skip


@settings(max_examples=150, deadline=None)
@given(
    schema=st.sampled_from(sorted(K8S_SCHEMAS.values())),
    body=st.dictionaries(FIELD_NAMES | st.text(max_size=4), JSONISH, max_size=8),
)
def test_random_bodies_decode_to_an_object_or_a_wire_error(schema: str, body: dict[str, Any]) -> None:
    try:
        obj = decode_object(pack({"v": 1, "t": schema, "o": body}))
    except WireError:
        return
    assert schema_of(type(obj)) == schema


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out: list[tuple[Any, ...]] = []
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, value in items:
        out.append((*prefix, key))
        out.extend(_paths(value, (*prefix, key)))
    return out


WIRE_SAMPLES = {kind: to_wire(parse_object(obj)) for kind, obj in ALL.items()}
SITES = [(kind, path) for kind, wire in WIRE_SAMPLES.items() for path in _paths(wire)]


@settings(max_examples=200, deadline=None)
@given(site=st.sampled_from(SITES), value=JSONISH)
def test_valid_bodies_with_one_subtree_replaced(site: tuple[str, tuple[Any, ...]], value: Any) -> None:
    kind, path = site
    body = copy.deepcopy(WIRE_SAMPLES[kind])
    node: Any = body
    for step in path[:-1]:
        node = node[step]
    node[path[-1]] = value
    try:
        obj = decode_object(pack({"v": 1, "t": f"k8s.{kind}", "o": body}))
    except WireError:
        return
    assert schema_of(type(obj)) == f"k8s.{kind}"


def test_registry_is_idempotent_and_refuses_conflicts() -> None:
    register("k8s.pod", Pod)  # same binding again is fine
    with pytest.raises(ValueError, match="already registered"):
        register("k8s.pod", Service)
    with pytest.raises(ValueError, match="already registered"):
        register("k8s.pod.other", Pod)


def test_unregistered_classes_cannot_be_encoded_without_a_schema() -> None:
    @dataclass(frozen=True)
    class Loose:
        n: int = 0

    with pytest.raises(TypeError, match="no registered schema"):
        encode_object(Loose())
    assert decode_as(Loose, encode("any.name", Loose(3))) == Loose(3)
