"""deploy/kustomize renders offline (kubectl's built-in kustomize) and validates against the API schemas.

Beyond schema validity: each overlay has the workloads xpunet needs, and the
settings file in its ConfigMap is accepted by every service's own Settings.
"""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from xpunet.runtime.plug import SERVICES, load_service
from xpunet.runtime.settings import build_settings, document_layer, env_layer

ROOT = Path(__file__).resolve().parents[3] / "deploy" / "kustomize"
KUBECTL = Path(sys.executable).parent / "kubectl"
K8S_VERSION = "1.30.0"  # the oldest Kubernetes we support
TARGETS = ["base", "overlays/edge", "overlays/dc"]

Doc = dict[str, Any]


def _render(target: str) -> list[Doc]:
    result = subprocess.run(
        [str(KUBECTL), "kustomize", str(ROOT / target)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


@pytest.fixture(scope="module", params=TARGETS)
def rendered(request: pytest.FixtureRequest) -> tuple[str, list[Doc]]:
    target: str = request.param
    return target, _render(target)


def _find(docs: list[Doc], kind: str, name: str) -> Doc:
    for doc in docs:
        if doc["kind"] == kind and doc["metadata"]["name"] == name:
            return doc
    raise AssertionError(f"no {kind} {name}")


def test_every_object_validates_strictly(rendered: tuple[str, list[Doc]]) -> None:
    _target, docs = rendered
    for doc in docs:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_validation_catches_a_misspelt_field(rendered: tuple[str, list[Doc]]) -> None:
    """The check above is not vacuous: an unknown field fails strict validation."""
    _target, docs = rendered
    broken = copy.deepcopy(_find(docs, "Deployment", "xpunet-lb"))
    broken["spec"]["replica"] = 2
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSION, strict=True)


def test_workloads(rendered: tuple[str, list[Doc]]) -> None:
    _target, docs = rendered
    assert all(d["metadata"].get("namespace", "xpunet-system") == "xpunet-system" for d in docs)
    for svc in ("watcher", "policy", "lb", "routing"):
        deployment = _find(docs, "Deployment", f"xpunet-{svc}")
        container = deployment["spec"]["template"]["spec"]["containers"][0]
        assert container["command"] == [f"xpunet-{svc}"]
        assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    datapath = _find(docs, "DaemonSet", "xpunet-datapath")["spec"]["template"]["spec"]
    assert datapath["hostNetwork"] is True
    nats = _find(docs, "StatefulSet", "nats")
    assert "--jetstream" in nats["spec"]["template"]["spec"]["containers"][0]["args"]
    leases = _find(docs, "Role", "xpunet-watcher-leader")["rules"][0]
    assert leases["apiGroups"] == ["coordination.k8s.io"]
    assert {"get", "create", "update"} <= set(leases["verbs"])
    watch = _find(docs, "ClusterRole", "xpunet-watcher")["rules"]
    watched = {r for rule in watch for r in rule["resources"]}
    assert watched >= {"pods", "namespaces", "nodes", "services", "endpointslices", "networkpolicies"}


def test_config_is_valid_for_every_service(rendered: tuple[str, list[Doc]]) -> None:
    """The ConfigMap's settings file and the manifests' XPUNET_* env pass each service's settings parser."""
    target, docs = rendered
    config_maps = [
        d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"].startswith("xpunet-config")
    ]
    assert len(config_maps) == 1
    name = config_maps[0]["metadata"]["name"]
    document = yaml.safe_load(config_maps[0]["data"]["xpunet.yaml"])
    workloads = {d["metadata"]["name"]: d for d in docs if d["kind"] in ("Deployment", "DaemonSet")}
    for svc in SERVICES:
        pod = workloads[f"xpunet-{svc}"]["spec"]["template"]["spec"]
        assert pod["volumes"][0]["configMap"]["name"] == name  # the generated (hashed) name is wired
        # Literal env values as the pod would see them; fieldRef values stand in as a node name.
        environ = {
            e["name"]: e.get("value", "node-x") for e in pod["containers"][0].get("env", []) if "name" in e
        }
        entry = load_service(svc)
        settings = build_settings(
            entry.settings_cls,
            [document_layer(document, f"{target} xpunet.yaml"), env_layer(environ, entry.settings_cls)],
        )
        assert settings.health.host == "0.0.0.0"
        assert settings.bus.urls[0].startswith("nats://nats")
