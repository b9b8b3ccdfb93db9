"""deploy/kustomize renders offline (kubectl's built-in kustomize) and validates against the API schemas.

Beyond schema validity: each overlay has the workloads xpunet needs, and the
settings file in its ConfigMap is accepted by every service's own Settings.
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path, PurePosixPath
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


# ---------------------------------------------------------------- the CNI on every node

SHIM = Path(sys.executable).parent / "xpunet-cni-shim"  # `make deps` builds it (static)
STOCK = {"base": ("veth", (0, 0)), "overlays/edge": ("veth", (0, 0)), "overlays/dc": ("sriov-vf", (8, 2))}


def _datapath_settings(target: str, docs: list[Doc]) -> Any:
    from xpunet.datapath.service import Settings as DatapathSettings

    config = next(
        d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"].startswith("xpunet-config")
    )
    pod = _find(docs, "DaemonSet", "xpunet-datapath")["spec"]["template"]["spec"]
    environ = {e["name"]: e.get("value", "node-x") for e in pod["containers"][0].get("env", [])}
    return build_settings(
        DatapathSettings,
        [
            document_layer(yaml.safe_load(config["data"]["xpunet.yaml"]), f"{target} xpunet.yaml"),
            env_layer(environ, DatapathSettings),
        ],
    )


def _conflist(docs: list[Doc]) -> dict[str, Any]:
    config = next(
        d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"].startswith("xpunet-cni-config")
    )
    conflist: dict[str, Any] = json.loads(config["data"]["10-xpunet.conflist"])
    return conflist


def _host_path(pod: Doc, container: Doc, path: str) -> str:
    """The host directory behind ``path`` in ``container`` (a hostPath volume mounted at or above it)."""
    volumes = {v["name"]: v for v in pod["volumes"]}
    wanted = PurePosixPath(path)
    for mount in container.get("volumeMounts", []):
        mounted = PurePosixPath(mount["mountPath"])
        volume = volumes[mount["name"]]
        if (wanted == mounted or mounted in wanted.parents) and "hostPath" in volume:
            return str(PurePosixPath(volume["hostPath"]["path"]) / wanted.relative_to(mounted))
    return ""


def test_the_datapath_serves_the_cni_from_the_host(rendered: tuple[str, list[Doc]]) -> None:
    """attach: on, its sockets and state on hostPath volumes, the conflist naming the same sockets."""
    target, docs = rendered
    settings = _datapath_settings(target, docs)
    attach = settings.attach
    assert attach.enabled
    backend, stock = STOCK[target]
    assert (attach.backend, attach.stock) == (backend, stock)
    pod = _find(docs, "DaemonSet", "xpunet-datapath")["spec"]["template"]["spec"]
    datapath = pod["containers"][0]
    assert _host_path(pod, datapath, str(Path(attach.socket_path).parent)) == "/run/xpunet"
    assert _host_path(pod, datapath, str(Path(attach.cni_agent_socket).parent)) == "/run/xpunet"
    # The state survives the pod: a restarted datapath restores attachments and leases from it.
    assert _host_path(pod, datapath, str(Path(attach.state_path).parent)) == "/var/lib/xpunet"
    netns = next(m for m in datapath["volumeMounts"] if m["mountPath"] == "/run/netns")
    assert netns["mountPropagation"] == "HostToContainer"
    assert "SYS_ADMIN" in datapath["securityContext"]["capabilities"]["add"]
    if settings.datapath.target == "p4rt":  # the xPU overlay: its client certificate from a Secret
        volumes = {v["name"]: v for v in pod["volumes"]}
        tls_dir = str(Path(settings.datapath.tls_cert).parent)
        tls = next(m for m in datapath["volumeMounts"] if m["mountPath"] == tls_dir)
        assert volumes[tls["name"]]["secret"]["secretName"] == "xpunet-datapath-tls"
    else:
        assert settings.datapath.target == "kernel"
        assert settings.datapath.kernel_uplinks

    conflist = _conflist(docs)
    assert (conflist["cniVersion"], conflist["name"]) == ("1.1.0", "xpunet")
    first, chained = conflist["plugins"]
    assert first["type"] == "xpunet-cni"  # it makes the interface; chained plugins follow
    assert (first["socket"], first["agentSocket"]) == (attach.socket_path, attach.cni_agent_socket)
    assert chained["type"] == "portmap"
    assert chained["capabilities"] == {"portMappings": True}
    # The plugin's own parser accepts it, as the runtime hands it over (name and version merged in).
    from xpunet.datapath.cni.config import parse_conf

    conf = parse_conf(
        {**first, "name": conflist["name"], "cniVersion": conflist["cniVersion"]}, command="ADD"
    )
    assert conf.socket == attach.socket_path


def test_the_init_container_installs_the_shim_and_conflist(rendered: tuple[str, list[Doc]]) -> None:
    _target, docs = rendered
    pod = _find(docs, "DaemonSet", "xpunet-datapath")["spec"]["template"]["spec"]
    (init,) = pod["initContainers"]
    env = {e["name"]: e["value"] for e in init["env"]}
    assert env["SHIM"] == "/usr/local/lib/xpunet/xpunet-cni-shim"  # where the Containerfile puts it
    for key, host in (("CNI_BIN_DIR", "/opt/cni/bin"), ("CNI_CONF_DIR", "/etc/cni/net.d")):
        assert _host_path(pod, init, env[key]) == host
    volumes = {v["name"]: v for v in pod["volumes"]}
    conf_mount = next(m for m in init["volumeMounts"] if env["CONFLIST"].startswith(m["mountPath"] + "/"))
    config_map = volumes[conf_mount["name"]]["configMap"]["name"]
    assert config_map.startswith("xpunet-cni-config-")  # the generated (hashed) name is wired


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, bytes]:
    """The base's initContainer script run for real, twice, into a scratch "host"."""
    assert SHIM.exists(), f"{SHIM} is missing: run `make cni-shim`"
    docs = _render("base")
    (init,) = _find(docs, "DaemonSet", "xpunet-datapath")["spec"]["template"]["spec"]["initContainers"]
    root = tmp_path_factory.mktemp("host")
    conflist = json.dumps(_conflist(docs)).encode()
    (root / "10-xpunet.conflist").write_bytes(conflist)
    bin_dir, conf_dir = root / "opt-cni-bin", root / "etc-cni-net.d"
    bin_dir.mkdir()
    conf_dir.mkdir()
    (bin_dir / "xpunet-cni").write_text("an older version")
    env = {e["name"]: e["value"] for e in init["env"]}
    env.update(
        SHIM=str(SHIM),
        CONFLIST=str(root / "10-xpunet.conflist"),
        CNI_BIN_DIR=str(bin_dir),
        CNI_CONF_DIR=str(conf_dir),
        PATH="/usr/sbin:/usr/bin:/sbin:/bin",
    )
    for _ in range(2):  # a restarted pod installs again over its own files
        result = subprocess.run([*init["command"], *init["args"]], env=env, capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
    return bin_dir, conf_dir, conflist


def test_install_leaves_exactly_the_plugin_and_its_config(installed: tuple[Path, Path, bytes]) -> None:
    bin_dir, conf_dir, conflist = installed
    assert sorted(p.name for p in bin_dir.iterdir()) == ["xpunet-cni"]  # no temp file left behind
    assert sorted(p.name for p in conf_dir.iterdir()) == ["10-xpunet.conflist"]
    plugin = bin_dir / "xpunet-cni"
    assert plugin.read_bytes() == SHIM.read_bytes()
    assert plugin.stat().st_mode & 0o777 == 0o755
    assert (conf_dir / "10-xpunet.conflist").read_bytes() == conflist


def test_the_installed_plugin_is_static(installed: tuple[Path, Path, bytes]) -> None:
    """It runs on the host, whose libc is not the image's."""
    plugin = installed[0] / "xpunet-cni"
    described = subprocess.run(["file", "-b", str(plugin)], capture_output=True, text=True, check=True)
    assert "statically linked" in described.stdout, described.stdout
    ldd = subprocess.run(["ldd", str(plugin)], capture_output=True, text=True, check=False)
    assert "not a dynamic executable" in ldd.stdout + ldd.stderr


def _run_on_host(plugin: Path, command: str, stdin: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    """Exec the installed plugin as a runtime on a node would: no Python plugin to fall back to."""
    env = {
        "CNI_COMMAND": command,
        "CNI_CONTAINERID": "c0ffee",
        "CNI_NETNS": "/var/run/netns/cni-c0ffee",
        "CNI_IFNAME": "eth0",
        "CNI_PATH": str(plugin.parent),
        "XPUNET_CNI_FALLBACK": str(plugin.parent / "no-python-plugin-here"),
    }
    result = subprocess.run([str(plugin)], input=json.dumps(stdin).encode(), env=env, capture_output=True)
    return result.returncode, json.loads(result.stdout)


def test_without_the_datapath_the_plugin_says_so(installed: tuple[Path, Path, bytes], tmp_path: Path) -> None:
    bin_dir, _conf_dir, raw = installed
    conflist = json.loads(raw)
    conf = {**conflist["plugins"][0], "name": conflist["name"], "cniVersion": conflist["cniVersion"]}
    conf["agentSocket"] = str(tmp_path / "cni-agent.sock")  # the datapath is not running
    rc, out = _run_on_host(bin_dir / "xpunet-cni", "ADD", conf)
    assert rc == 1
    assert out["code"] == 11  # try again later: the agent comes back with the datapath
    assert "datapath agent unreachable" in out["msg"]
    assert conf["agentSocket"] in out["msg"]
    assert "is the xpunet datapath running on this node?" in out["details"]
    rc, out = _run_on_host(bin_dir / "xpunet-cni", "VERSION", {"cniVersion": "1.1.0"})
    assert rc == 0
    assert "1.1.0" in out["supportedVersions"]
