"""The watcher's Deployment can run in-cluster: a mounted token, and RBAC for what the watcher calls.

(The rendered, schema-validated kustomize output is tests/integration/runtime/test_deploy_kustomize.py;
this ties the base manifest to the watcher's code: every kind the informers list and watch, and the Lease.)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from xpunet.model import Kind
from xpunet.watcher.informer import LIST_CALLS
from xpunet.watcher.service import WatcherOptions

BASE = Path(__file__).resolve().parents[3] / "deploy" / "kustomize" / "base"
# (API group, resource) of each kind the informers list and watch.
RESOURCES = {
    Kind.POD: ("", "pods"),
    Kind.NAMESPACE: ("", "namespaces"),
    Kind.NODE: ("", "nodes"),
    Kind.SERVICE: ("", "services"),
    Kind.ENDPOINT_SLICE: ("discovery.k8s.io", "endpointslices"),
    Kind.NETWORK_POLICY: ("networking.k8s.io", "networkpolicies"),
}


def _docs() -> dict[tuple[str, str], dict[str, Any]]:
    docs = yaml.safe_load_all((BASE / "watcher.yaml").read_text())
    return {(d["kind"], d["metadata"]["name"]): d for d in docs}


def _granted(rules: list[dict[str, Any]]) -> set[tuple[str, str, str]]:
    return {
        (group, resource, verb)
        for rule in rules
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }


def test_every_watched_kind_is_listed_here() -> None:
    assert set(RESOURCES) == set(LIST_CALLS)


def test_the_pod_mounts_the_service_account_token_and_has_no_kubeconfig() -> None:
    docs = _docs()
    assert ("ServiceAccount", "xpunet-watcher") in docs
    pod = docs[("Deployment", "xpunet-watcher")]["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "xpunet-watcher"
    assert pod.get("automountServiceAccountToken", True) is True
    env = {e["name"] for c in pod["containers"] for e in c.get("env", [])}
    assert "KUBECONFIG" not in env  # in a pod, watcher.source=kube must mean in-cluster


def test_rbac_covers_list_and_watch_of_every_kind_and_the_lease() -> None:
    docs = _docs()
    cluster = _granted(docs[("ClusterRole", "xpunet-watcher")]["rules"])
    for group, resource in RESOURCES.values():
        assert {(group, resource, "list"), (group, resource, "watch")} <= cluster, resource
    lease = _granted(docs[("Role", "xpunet-watcher-leader")]["rules"])
    for verb in ("get", "create", "update"):  # what LeaderElector calls: read, create, replace
        assert ("coordination.k8s.io", "leases", verb) in lease
    for binding, role in (("ClusterRoleBinding", "ClusterRole"), ("RoleBinding", "Role")):
        doc = next(d for (k, _), d in docs.items() if k == binding)
        assert doc["roleRef"]["kind"] == role
        assert {"kind": "ServiceAccount", "name": "xpunet-watcher", "namespace": "xpunet-system"} in doc[
            "subjects"
        ]


def test_the_lease_lives_where_the_role_is_granted() -> None:
    kustomization = yaml.safe_load((BASE / "kustomization.yaml").read_text())
    settings = yaml.safe_load((BASE / "config" / "xpunet.yaml").read_text())["watcher"]
    assert settings["source"] == "kube"
    namespace = settings.get("lease_namespace", WatcherOptions().lease_namespace)
    assert namespace == kustomization["namespace"]  # the Role (namespaced by kustomize) grants it there
