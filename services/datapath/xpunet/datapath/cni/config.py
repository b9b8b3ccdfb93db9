"""The CNI invocation, parsed: command and CNI_* environment, network config from stdin. Stdlib only.

Fields the runtime adds (`runtimeConfig`, `capabilities`, `args`, `prevResult`,
`cni.dev/valid-attachments`, `cniVersions`) are accepted; xpunet's own keys
are type-checked and a wrong one is named in the error.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from xpunet.datapath.cni.errors import (
    DECODE_FAILURE,
    INCOMPATIBLE_VERSION,
    INVALID_CONFIG,
    INVALID_ENVIRONMENT,
    CniError,
)

SUPPORTED_VERSIONS = ("0.4.0", "1.0.0", "1.1.0")
LATEST = "1.1.0"
COMMANDS = ("ADD", "DEL", "CHECK", "STATUS", "GC", "VERSION")
DEFAULT_SOCKET = "/run/xpunet/infra.sock"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
_IFNAME_BAD = re.compile(r"[/\s:]")


@dataclass(frozen=True, slots=True)
class TlsClient:
    ca: str
    cert: str = ""
    key: str = ""
    server_name: str = ""


@dataclass(frozen=True, slots=True)
class NetConf:
    cni_version: str
    name: str
    socket: str = DEFAULT_SOCKET
    address: str = ""  # TCP datapath (xPU); with tls
    tls: TlsClient | None = None
    timeout: float = 10.0
    dns: Mapping[str, Any] | None = None
    prev_result: Mapping[str, Any] | None = None
    valid_attachments: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class Invocation:
    command: str
    container_id: str
    netns: str
    ifname: str
    args: Mapping[str, str]
    conf: NetConf

    @property
    def pod_namespace(self) -> str:
        return self.args.get("K8S_POD_NAMESPACE", "")

    @property
    def pod_name(self) -> str:
        return self.args.get("K8S_POD_NAME", "")

    @property
    def pod_uid(self) -> str:
        return self.args.get("K8S_POD_UID", "")


def version_tuple(version: str) -> tuple[int, ...]:
    try:
        return tuple(int(p) for p in version.split("."))
    except ValueError:
        return (0,)


def parse_args(raw: str) -> dict[str, str]:
    """CNI_ARGS: `K=V;K=V` pairs."""
    out: dict[str, str] = {}
    for part in raw.split(";"):
        if not part:
            continue
        key, sep, value = part.partition("=")
        if not sep:
            raise CniError(INVALID_ENVIRONMENT, f"CNI_ARGS entry {part!r} is not KEY=VALUE")
        out[key] = value
    return out


def load_json(stdin: bytes) -> dict[str, Any]:
    try:
        data = json.loads(stdin or b"{}")
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CniError(DECODE_FAILURE, "network config on stdin is not valid JSON", str(exc)) from exc
    if not isinstance(data, dict):
        raise CniError(DECODE_FAILURE, "network config on stdin is not a JSON object")
    return data


def parse_conf(data: Mapping[str, Any], *, command: str) -> NetConf:
    version = data.get("cniVersion", "")
    if not isinstance(version, str) or not version:
        raise CniError(INVALID_CONFIG, "network config has no cniVersion")
    if version not in SUPPORTED_VERSIONS:
        raise CniError(
            INCOMPATIBLE_VERSION,
            f"cniVersion {version} is not supported by xpunet-cni",
            f"supported: {', '.join(SUPPORTED_VERSIONS)}",
        )
    if command in ("STATUS", "GC") and version_tuple(version) < (1, 1, 0):
        raise CniError(INCOMPATIBLE_VERSION, f"{command} needs cniVersion 1.1.0 or later, got {version}")
    name = data.get("name", "")
    if not isinstance(name, str) or not _NAME.match(name):
        raise CniError(INVALID_CONFIG, f"network config name {name!r} is missing or not a valid network name")
    socket = _opt_str(data, "socket", DEFAULT_SOCKET)
    datapath = data.get("datapath")
    address, tls = "", None
    if datapath is not None:
        if not isinstance(datapath, dict):
            raise CniError(INVALID_CONFIG, "network config 'datapath' must be an object")
        address = _opt_str(datapath, "address", "")
        raw_tls = datapath.get("tls")
        if not address or not isinstance(raw_tls, dict):
            raise CniError(INVALID_CONFIG, "network config 'datapath' needs 'address' and a 'tls' object")
        ca = _opt_str(raw_tls, "ca", "")
        if not ca:
            raise CniError(INVALID_CONFIG, "network config 'datapath.tls' needs 'ca' (the datapath's CA)")
        tls = TlsClient(
            ca=ca,
            cert=_opt_str(raw_tls, "cert", ""),
            key=_opt_str(raw_tls, "key", ""),
            server_name=_opt_str(raw_tls, "serverName", ""),
        )
    timeout = data.get("timeoutSeconds", 10.0)
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0:
        raise CniError(INVALID_CONFIG, f"'timeoutSeconds' is not a positive number: {timeout!r}")
    dns = data.get("dns")
    if dns is not None and not isinstance(dns, dict):
        raise CniError(INVALID_CONFIG, "network config 'dns' must be an object")
    prev = data.get("prevResult")
    if prev is not None and not isinstance(prev, dict):
        raise CniError(INVALID_CONFIG, "network config 'prevResult' must be an object")
    return NetConf(
        cni_version=version,
        name=name,
        socket=socket,
        address=address,
        tls=tls,
        timeout=float(timeout),
        dns=dns,
        prev_result=prev,
        valid_attachments=_valid_attachments(data) if command == "GC" else (),
    )


def _valid_attachments(data: Mapping[str, Any]) -> tuple[tuple[str, str], ...]:
    raw = data.get("cni.dev/valid-attachments", data.get("cni.dev/attachments", []))
    if not isinstance(raw, list):
        raise CniError(INVALID_CONFIG, "'cni.dev/valid-attachments' must be a list")
    out: list[tuple[str, str]] = []
    for item in raw:
        if not isinstance(item, dict) or not isinstance(item.get("containerID"), str):
            raise CniError(INVALID_CONFIG, f"'cni.dev/valid-attachments' entry {item!r} has no containerID")
        out.append((item["containerID"], str(item.get("ifname", ""))))
    return tuple(out)


def _opt_str(data: Mapping[str, Any], key: str, default: str) -> str:
    value = data.get(key, default)
    if not isinstance(value, str):
        raise CniError(INVALID_CONFIG, f"network config {key!r} must be a string, not {value!r}")
    return value


def parse_invocation(env: Mapping[str, str], stdin: bytes) -> Invocation:
    command = env.get("CNI_COMMAND", "")
    if command not in COMMANDS:
        what = (
            f"CNI_COMMAND {command!r} is not one of {', '.join(COMMANDS)}"
            if command
            else "CNI_COMMAND is not set"
        )
        raise CniError(INVALID_ENVIRONMENT, what)
    data = load_json(stdin)
    conf = parse_conf(data, command=command)
    attachment = ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME")
    needed: dict[str, tuple[str, ...]] = {"ADD": attachment, "CHECK": attachment}
    needed["DEL"] = ("CNI_CONTAINERID", "CNI_IFNAME")  # the netns may be gone already
    missing = [name for name in needed.get(command, ()) if not env.get(name)]
    if missing:
        raise CniError(INVALID_ENVIRONMENT, f"{command} needs {', '.join(missing)} in the environment")
    ifname = env.get("CNI_IFNAME", "")
    if ifname and (len(ifname) > 15 or _IFNAME_BAD.search(ifname) or ifname in (".", "..")):
        raise CniError(INVALID_ENVIRONMENT, f"CNI_IFNAME {ifname!r} is not a valid interface name")
    return Invocation(
        command=command,
        container_id=env.get("CNI_CONTAINERID", ""),
        netns=env.get("CNI_NETNS", ""),
        ifname=ifname,
        args=parse_args(env.get("CNI_ARGS", "")),
        conf=conf,
    )
