"""MirrorState: normalise, compare with what was written, coalesce, reconcile on relist."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from xpunet.model import K8sObject, Kind
from xpunet.model.keys import object_key
from xpunet.testing.kubeapi import namespace_obj, network_policy, node, pod
from xpunet.watcher.state import (
    MirrorState,
    decode_list_page,
    raw_key,
    sync_key,
    sync_marker,
)
from xpunet.wire import encode_object


def encode(obj: K8sObject) -> bytes:
    return encode_object(obj)


def drain(state: MirrorState) -> dict[str, bytes | None]:
    batch = state.take(10_000)
    state.committed(batch)
    return {c.key: c.value for c in batch}


def test_keys() -> None:
    assert object_key(Kind.POD, "ns1", "web-0") == "pod.ns1.web-0"
    assert object_key(Kind.NODE, None, "n1.example.com") == "node.n1.example.com"
    assert sync_key(Kind.ENDPOINT_SLICE) == "sync.endpointslice"
    assert raw_key(Kind.POD, {"metadata": {"name": "a"}}) == "pod.default.a"
    assert raw_key(Kind.POD, {"metadata": {"name": "a b"}}) is None
    assert raw_key(Kind.POD, {"metadata": {}}) is None


@pytest.mark.parametrize(
    "mutate",
    [
        pytest.param(lambda o: o["metadata"].update(annotations={"x": "y"}), id="annotations"),
        pytest.param(lambda o: o["metadata"].update(managedFields=[{"manager": "k"}]), id="managed-fields"),
        pytest.param(lambda o: o["metadata"].update(resourceVersion="999"), id="resource-version"),
        pytest.param(lambda o: o["status"].update(startTime="2026-01-01T00:00:00Z"), id="status-heartbeat"),
    ],
)
def test_update_that_changes_nothing_used_writes_nothing(mutate: Any) -> None:
    state = MirrorState(encode)
    raw = pod("ns1", "web-0", ip="10.0.0.1")
    state.upsert(Kind.POD, raw, now=0)
    assert drain(state) == {"pod.ns1.web-0": encode_pod(raw)}
    changed = copy.deepcopy(raw)
    mutate(changed)
    state.upsert(Kind.POD, changed, now=1)
    assert state.pending == 0


def encode_pod(raw: dict[str, Any]) -> bytes:
    from xpunet.model.parse import parse_pod

    return encode(parse_pod(raw))


def test_label_change_writes() -> None:
    state = MirrorState(encode)
    raw = pod("ns1", "web-0", ip="10.0.0.1")
    state.upsert(Kind.POD, raw, now=0)
    drain(state)
    raw["metadata"]["labels"] = {"app": "other"}
    state.upsert(Kind.POD, raw, now=1)
    assert list(drain(state)) == ["pod.ns1.web-0"]


def test_malformed_object_is_reported_and_keeps_last_good_value() -> None:
    state = MirrorState(encode)
    good = network_policy("ns1", "p", app="web")
    state.upsert(Kind.NETWORK_POLICY, good, now=0)
    written = drain(state)
    bad = copy.deepcopy(good)
    bad["spec"]["ingress"][0]["ports"][0]["port"] = 70000
    state.upsert(Kind.NETWORK_POLICY, bad, now=1)
    assert state.pending == 0
    assert [(r.kind, r.ref) for r in state.rejections] == [(Kind.NETWORK_POLICY, "ns1/p")]
    assert "70000" in state.rejections[0].reason
    assert dict(state.written(Kind.NETWORK_POLICY)) == written
    # A relist still sees the object: its key is not stale.
    state.begin_relist(Kind.NETWORK_POLICY)
    state.upsert(Kind.NETWORK_POLICY, bad, now=2)
    assert state.end_relist(Kind.NETWORK_POLICY, resource_version="5", now=2) == 0
    # An explicit delete still deletes.
    state.delete(Kind.NETWORK_POLICY, bad, now=3)
    assert drain(state) == {"networkpolicy.ns1.p": None}


def test_changes_coalesce_to_the_newest_with_the_oldest_observation() -> None:
    state = MirrorState(encode)
    raw = pod("ns1", "a", ip="10.0.0.1")
    state.upsert(Kind.POD, raw, now=1.0)
    raw2 = pod("ns1", "a", ip="10.0.0.2")
    state.upsert(Kind.POD, raw2, now=2.0)
    [change] = state.take(10)
    assert change.value == encode_pod(raw2)
    assert change.observed == 1.0


def test_add_then_delete_before_writing_writes_nothing() -> None:
    state = MirrorState(encode)
    raw = pod("ns1", "a", ip="10.0.0.1")
    state.upsert(Kind.POD, raw, now=0)
    state.delete(Kind.POD, raw, now=0)
    assert state.pending == 0


def test_relist_deletes_only_vanished_keys_of_that_kind() -> None:
    state = MirrorState(encode)
    a, b = pod("ns1", "a", ip="10.0.0.1"), pod("ns1", "b", ip="10.0.0.2")
    n = node("n1", ip="192.168.0.1", pod_cidr="10.64.0.0/24")
    state.load(
        {
            "pod.ns1.a": encode_pod(a),
            "pod.ns1.b": encode_pod(b),
            "node.n1": b"whatever",
            "sync.pod": sync_marker(Kind.POD),
        }
    )
    state.begin_relist(Kind.POD)
    state.upsert(Kind.POD, a, now=0)
    assert state.end_relist(Kind.POD, resource_version="7", now=0) == 1
    state.mark_synced(Kind.POD, resource_version="7", now=0)
    assert drain(state) == {"pod.ns1.b": None}  # a unchanged, marker already there
    state.begin_relist(Kind.NODE)
    state.upsert(Kind.NODE, n, now=0)
    state.end_relist(Kind.NODE, resource_version="8", now=0)
    state.mark_synced(Kind.NODE, resource_version="8", now=0)
    assert list(drain(state)) == ["node.n1", "sync.node"]  # rewritten (differed), then the marker


def test_failed_batch_is_requeued_behind_nothing_and_superseded_values_win() -> None:
    state = MirrorState(encode)
    state.upsert(Kind.POD, pod("ns1", "a", ip="10.0.0.1"), now=0)
    state.upsert(Kind.NAMESPACE, namespace_obj("ns1"), now=0)
    batch = state.take(10)
    newer = pod("ns1", "a", ip="10.0.0.9")
    state.upsert(Kind.POD, newer, now=1)
    state.failed(batch)
    assert drain(state) == {"pod.ns1.a": encode_pod(newer), "namespace.ns1": batch[1].value}


events = st.lists(
    st.tuples(st.sampled_from(["up", "del", "flush", "fail"]), st.integers(0, 3), st.integers(1, 4)),
    max_size=40,
)


@settings(max_examples=150, deadline=None)
@given(events)
def test_written_state_converges_to_the_source(script: list[tuple[str, int, int]]) -> None:
    """Whatever the interleaving of events, flushes and failed writes, KV ends equal to the source."""
    state = MirrorState(encode)
    kv: dict[str, bytes] = {}
    source: dict[str, bytes] = {}
    for op, i, ip in script:
        raw = pod("ns1", f"p{i}", ip=f"10.0.0.{ip}")
        key = f"pod.ns1.p{i}"
        if op == "up":
            state.upsert(Kind.POD, raw, now=0)
            source[key] = encode_pod(raw)
        elif op == "del":
            state.delete(Kind.POD, raw, now=0)
            source.pop(key, None)
        else:
            batch = state.take(2)
            if op == "fail":
                state.failed(batch)
                continue
            for c in batch:
                if c.value is None:
                    kv.pop(c.key, None)
                else:
                    kv[c.key] = c.value
            state.committed(batch)
    while state.pending:
        for c in state.take(2):
            if c.value is None:
                kv.pop(c.key, None)
            else:
                kv[c.key] = c.value
            state.committed([c])
    assert kv == source


def test_decode_list_page_normalises_items_and_keeps_rejects_keyed() -> None:
    body = json.dumps(
        {
            "kind": "PodList",
            "apiVersion": "v1",
            "metadata": {"resourceVersion": "42", "continue": "abc"},
            "items": [pod("ns1", "a", ip="10.0.0.1"), pod("ns1", "bad", ip="nope"), {"metadata": {}}],
        }
    ).encode()
    page = decode_list_page(Kind.POD, body)
    assert page.continue_token == "abc"
    assert page.resource_version == "42"
    good, bad, nameless = page.items
    assert (good.key, good.value) == ("pod.ns1.a", encode_pod(pod("ns1", "a", ip="10.0.0.1")))
    assert (bad.key, bad.value, bad.ref) == ("pod.ns1.bad", None, "ns1/bad")
    assert "nope" in bad.reason
    assert nameless.key is None
    assert nameless.value is None
    state = MirrorState(encode)
    for item in page.items:
        state.apply(Kind.POD, item, now=0)
    assert [c.key for c in state.take(10)] == ["pod.ns1.a"]
    assert [r.ref for r in state.rejections] == ["ns1/bad", "default/?"]
