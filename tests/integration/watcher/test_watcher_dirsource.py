"""The embedded source: a manifest directory mirrored into a real NATS KV, following edits."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import yaml
from opentelemetry import metrics, trace

from xpunet.bus.api import StateStore
from xpunet.model import Kind, Pod, Service
from xpunet.model.parse import parse_pod
from xpunet.testing.kubeapi import KVFollower, endpoint_slice, namespace_obj, node, pod, service
from xpunet.watcher.dirsource import DirectorySource
from xpunet.watcher.engine import Watcher
from xpunet.watcher.metrics import WatcherMetrics
from xpunet.watcher.state import sync_key
from xpunet.wire import decode_k8s, encode_object

ALL_SYNCED = {sync_key(k) for k in Kind}


def put(path: Path, docs: list[object] | str) -> None:
    """Replace a file atomically, as editors and `kubectl`-style tools do."""
    text = docs if isinstance(docs, str) else yaml.safe_dump_all(docs)
    tmp = path.with_name("." + path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


@contextlib.asynccontextmanager
async def watching(root: Path, kv: StateStore) -> AsyncIterator[DirectorySource]:
    source = DirectorySource(root, poll_interval=0.02)
    watcher = Watcher(
        store=kv,
        source=source,
        encode=encode_object,
        tracer=trace.get_tracer("test"),
        metrics=WatcherMetrics(metrics.get_meter("test")),
    )
    task = asyncio.create_task(watcher.run())
    try:
        yield source
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_directory_is_mirrored_and_followed(
    tmp_path: Path, kv: StateStore, caplog: pytest.LogCaptureFixture
) -> None:
    root = tmp_path / "manifests"
    (root / "apps").mkdir(parents=True)
    put(
        root / "ns.yaml",
        [namespace_obj("ns1"), {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "x"}}],
    )
    put(root / "apps" / "pods.yml", [pod("ns1", "a", ip="10.0.0.1"), pod("ns1", "b", ip="10.0.0.2")])
    svc_list = {
        "apiVersion": "v1",
        "kind": "List",
        "items": [
            service("ns1", "web", cluster_ip="10.96.0.10"),
            endpoint_slice("ns1", "web-1", service_name="web", ips=["10.0.0.1"]),
        ],
    }
    (root / "svc.json").write_text(json.dumps(svc_list))
    put(root / "broken.yaml", "kind: Node\nmetadata: {name: [unclosed\n")
    put(
        root / "badobj.yaml",
        [node("n1", ip="192.168.0.1", pod_cidr="10.64.0.0/24"), pod("ns1", "bad", ip="nope")],
    )
    keys = {
        "namespace.ns1",
        "pod.ns1.a",
        "pod.ns1.b",
        "service.ns1.web",
        "endpointslice.ns1.web-1",
        "node.n1",
    }
    async with KVFollower(kv) as kvf, watching(root, kv) as source:
        await kvf.until(lambda v: set(v) == keys | ALL_SYNCED)
        assert root / "broken.yaml" in source.errors  # reported, not fatal
        assert "manifest" in caplog.text
        assert "broken.yaml" in caplog.text
        assert "skipping malformed pod ns1/bad" in caplog.text

        # edit: a pod changes, another goes away, one is added
        put(root / "apps" / "pods.yml", [pod("ns1", "a", ip="10.0.0.11"), pod("ns1", "c", ip="10.0.0.3")])
        await kvf.until(lambda v: "pod.ns1.c" in v and "pod.ns1.b" not in v)
        a = decode_k8s(kvf.values["pod.ns1.a"])
        assert isinstance(a, Pod)
        assert a.ips == ("10.0.0.11",)

        # a file is deleted: its objects go
        (root / "svc.json").unlink()
        await kvf.until(lambda v: "service.ns1.web" not in v and "endpointslice.ns1.web-1" not in v)

        # the broken file is fixed: it loads
        put(root / "broken.yaml", [service("ns1", "api", cluster_ip="10.96.0.11", port=443)])
        await kvf.until(lambda v: "service.ns1.api" in v)
        api = decode_k8s(kvf.values["service.ns1.api"])
        assert isinstance(api, Service)
        assert api.ports[0].port == 443
        assert root / "broken.yaml" not in source.errors

        # a file turning broken keeps its previous objects
        put(root / "apps" / "pods.yml", "- [unclosed\n")
        put(root / "ns.yaml", [namespace_obj("ns1"), namespace_obj("ns2")])
        await kvf.until(lambda v: "namespace.ns2" in v)
        assert {"pod.ns1.a", "pod.ns1.c"} <= set(kvf.values)


async def test_an_object_defined_twice_survives_the_removal_of_one_file(
    tmp_path: Path, kv: StateStore
) -> None:
    put(tmp_path / "one.yaml", [pod("ns1", "a", ip="10.0.0.1")])
    async with KVFollower(kv) as kvf, watching(tmp_path, kv) as source:
        await kvf.until(lambda v: "pod.ns1.a" in v and sync_key(Kind.POD) in v)
        put(tmp_path / "two.yaml", [pod("ns1", "a", ip="10.0.0.2")])
        await kvf.until(lambda v: decode_k8s(v["pod.ns1.a"]).ips == ("10.0.0.2",))  # type: ignore[union-attr]  # a Pod
        (tmp_path / "two.yaml").unlink()
        # one.yaml still defines it: back to its version, not deleted
        await kvf.until(lambda v: decode_k8s(v["pod.ns1.a"]).ips == ("10.0.0.1",))  # type: ignore[union-attr]  # a Pod
        assert not source.errors


async def test_first_scan_deletes_what_no_file_defines_any_more(tmp_path: Path, kv: StateStore) -> None:
    # A previous run mirrored pods a and gone; gone's file was removed while nothing ran.
    await kv.put("pod.ns1.gone", encode_object(parse_pod(pod("ns1", "gone", ip="10.0.0.9"))))
    await kv.put("pod.ns1.a", encode_object(parse_pod(pod("ns1", "a", ip="10.0.0.1"))))
    put(tmp_path / "one.yaml", [pod("ns1", "a", ip="10.0.0.1")])
    put(tmp_path / "broken.yaml", "- [unclosed\n")
    async with KVFollower(kv) as kvf, watching(tmp_path, kv):
        # While a file is unreadable its objects are unknown: nothing is swept yet.
        await kvf.until(lambda v: set(v) >= ALL_SYNCED)
        assert "pod.ns1.gone" in kvf.values
        (tmp_path / "broken.yaml").unlink()
        await kvf.until(lambda v: set(v) == {"pod.ns1.a"} | ALL_SYNCED)
        assert kvf.puts.get("pod.ns1.a", 0) == 0  # unchanged: not rewritten
