"""Property: for ANY JSON-ish input, parsing yields a model object or a ModelError, nothing else.

Three generators: whole random trees under a supported apiVersion/kind (using
the field names the parsers read, so they get deep), the valid samples with one
random subtree replaced or deleted, and arbitrary top-level values.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from xpunet.model import ModelError
from xpunet.model.parse import PARSERS, parse_object
from xpunet.model.samples import ALL, sample

# Field names the parsers look up, so random trees reach the deep code paths.
KEYS = [
    "metadata", "name", "namespace", "uid", "labels", "spec", "status", "nodeName", "containers",
    "initContainers", "restartPolicy", "ports", "containerPort", "protocol", "hostNetwork", "podIP",
    "podIPs", "ip", "phase", "conditions", "type", "podCIDR", "podCIDRs", "addresses", "address",
    "clusterIP", "clusterIPs", "selector", "port", "targetPort", "nodePort", "externalIPs",
    "loadBalancer", "ingress", "sessionAffinity", "sessionAffinityConfig", "clientIP", "timeoutSeconds",
    "externalTrafficPolicy", "internalTrafficPolicy", "ipFamilies", "externalName", "addressType",
    "endpoints", "ready", "serving", "terminating", "zone", "hints", "forZones", "forNodes", "targetRef",
    "kind", "podSelector", "namespaceSelector", "ipBlock", "cidr", "except", "matchLabels",
    "matchExpressions", "key", "operator", "values", "policyTypes", "egress", "from", "to", "endPort",
]  # fmt: skip
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**64), max_value=2**64),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.sampled_from(
        ["TCP", "UDP", "ICMP", "In", "Exists", "Ingress", "Egress", "10.0.0.1", "10.0.0.0/8", "fd00::1",
         "None", "True", "Ready", "Pod", "IPv4", "IPv6", "FQDN", "http", "ClientIP", "Local", "", "x"]
    ),
    st.integers(min_value=0, max_value=70000),
)  # fmt: skip
JSON = st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=6), inner, max_size=5)
    ),
    max_leaves=30,
)
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def parses_or_model_error(obj: Any) -> None:
    error: ModelError | None = None
    try:
        parse_object(obj)
    except ModelError as err:
        error = err
    if error is not None:  # the message must render and name the object
        assert str(error).startswith(f"{error.kind} {error.ref}: ")


@FUZZ
@given(kind=st.sampled_from(sorted(PARSERS)), body=st.dictionaries(st.sampled_from(KEYS), JSON, max_size=6))
def test_random_trees_of_a_known_kind(kind: tuple[str, str], body: dict[str, Any]) -> None:
    body["apiVersion"], body["kind"] = kind
    parses_or_model_error(body)


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    if isinstance(node, dict):
        for key, value in node.items():
            yield (*prefix, key)
            yield from _paths(value, (*prefix, key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield (*prefix, i)
            yield from _paths(value, (*prefix, i))


MUTATION_SITES = [(kind, path) for kind, obj in ALL.items() for path in _paths(obj) if path[-1] != "kind"]


@FUZZ
@given(site=st.sampled_from(MUTATION_SITES), value=JSON, delete=st.booleans())
def test_samples_with_one_subtree_replaced(
    site: tuple[str, tuple[Any, ...]], value: Any, delete: bool
) -> None:
    kind, path = site
    obj = sample(kind)
    node: Any = obj
    for step in path[:-1]:
        node = node[step]
    if delete and isinstance(node, dict):
        del node[path[-1]]
    else:
        node[path[-1]] = value
    parses_or_model_error(obj)


@FUZZ
@given(value=JSON | st.dictionaries(st.integers() | st.text(max_size=4), JSON, max_size=4))
def test_arbitrary_values(value: Any) -> None:
    parses_or_model_error(value)


@settings(max_examples=100, deadline=None)
@given(
    kind=st.sampled_from(sorted(ALL)),
    labels=st.dictionaries(st.integers() | st.none(), st.text(), max_size=3),
)
def test_non_string_label_keys(kind: str, labels: dict[Any, Any]) -> None:
    obj = sample(kind)
    obj["metadata"]["labels"] = labels
    parses_or_model_error(obj)
