"""Keys of objects in xpunet-k8s: object_key and parse_object_key are inverses."""

from __future__ import annotations

import pytest

from xpunet.model import Kind
from xpunet.model.keys import object_key, parse_object_key


@pytest.mark.parametrize(
    ("kind", "namespace", "name", "key"),
    [
        pytest.param(Kind.POD, "shop", "web-1", "pod.shop.web-1", id="namespaced"),
        pytest.param(Kind.POD, "shop", "web.v2", "pod.shop.web.v2", id="name-with-dots"),
        pytest.param(Kind.NODE, None, "ip-10-0-0-1.ec2.internal", "node.ip-10-0-0-1.ec2.internal", id="node"),
        pytest.param(Kind.NAMESPACE, None, "shop", "namespace.shop", id="cluster-scoped"),
        pytest.param(Kind.ENDPOINT_SLICE, "a", "web-x1", "endpointslice.a.web-x1", id="slice"),
    ],
)
def test_round_trip(kind: Kind, namespace: str | None, name: str, key: str) -> None:
    assert object_key(kind, namespace, name) == key
    assert parse_object_key(key) == (kind, namespace, name)


@pytest.mark.parametrize("key", ["sync.pod", "pod", "pod.shop", "pod..x", "health.node-1", "node."])
def test_other_keys_are_not_objects(key: str) -> None:
    assert parse_object_key(key) is None
