"""The CNI verbs of `xpunet-cni` (spec 1.1: ADD, DEL, CHECK, STATUS, GC, VERSION): `run(env, stdin)`.

Runs in the exec'ed plugin process, or in the resident agent (see agent.py).
Takes the CNI_* environment and the network config, asks the datapath's
infra API for the pod's vNIC and addresses, plumbs the pod side and returns
the result JSON.  Every failure returns the spec's error JSON and a non-zero
code; an ADD that fails after the datapath attached undoes the pod side and
detaches, so nothing is left half-attached.

Each verb is a generator of steps (steps.py): the same verb code runs
blocking (`run`: the exec'ed plugin, the agent's worker threads) or on the
datapath's event loop (`run_async`: the agent inside the datapath).  gRPC,
protobuf and pyroute2 are imported only by the verbs that need them: in the
exec'ed plugin every import is paid for on each call.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, TypeAlias

from xpunet.datapath.cni.config import LATEST, SUPPORTED_VERSIONS, Invocation, load_json, parse_invocation
from xpunet.datapath.cni.errors import (
    CHECK_FAILED,
    IO_FAILURE,
    PLUGIN_NOT_AVAILABLE,
    TRY_AGAIN_LATER,
    UNKNOWN_CONTAINER,
    CniError,
)
from xpunet.datapath.cni.steps import AsyncCall, Call, Flow, Inspect, Plumb, Unplumb, drive, drive_async

if TYPE_CHECKING:
    from xpunet._gen.xpunet.infra.v1 import infra_pb2 as pb
    from xpunet.datapath.cni.client import InfraCalls
    from xpunet.datapath.cni.config import NetConf
    from xpunet.datapath.cni.netns import Observed, Plan

Connect: TypeAlias = "Callable[[NetConf], InfraCalls]"  # the infra API named by a network config
AsyncConnect: TypeAlias = "Callable[[NetConf], AsyncCall | None]"  # in-process calls, if this datapath's

log = logging.getLogger("xpunet.cni")


def run(env: Mapping[str, str], stdin: bytes, *, connect: Connect | None = None) -> tuple[int, str]:
    """One plugin run, blocking: (exit code, stdout).  `connect`: the infra API (default gRPC)."""
    version = _declared_version(stdin)
    try:
        if env.get("CNI_COMMAND") == "VERSION":
            return 0, _version(version)
        inv = parse_invocation(env, stdin)
        reach = connect or _grpc_client
        return _ok(drive(VERBS[inv.command](inv), lambda: reach(inv.conf)))
    except Exception as exc:
        return _failed(version, exc)


async def run_async(
    env: Mapping[str, str], stdin: bytes, *, connect: AsyncConnect, host_netns: str = ""
) -> tuple[int, str] | None:
    """One plugin run on the running event loop, for a config naming the datapath `connect` knows
    in-process; None for any other (run it with `run` then)."""
    version = _declared_version(stdin)
    try:
        if env.get("CNI_COMMAND") == "VERSION":
            return 0, _version(version)
        inv = parse_invocation(env, stdin)
        call = connect(inv.conf)
        if call is None:
            return None
        return _ok(await drive_async(VERBS[inv.command](inv), call, host_netns=host_netns))
    except Exception as exc:
        return _failed(version, exc)


def _version(version: str) -> str:
    return json.dumps({"cniVersion": version, "supportedVersions": list(SUPPORTED_VERSIONS)})


def _ok(result: dict[str, Any] | None) -> tuple[int, str]:
    return 0, json.dumps(result) if result is not None else ""


def _failed(version: str, exc: Exception) -> tuple[int, str]:
    if isinstance(exc, CniError):
        log.warning("%s%s", exc.msg, f": {exc.details}" if exc.details else "")
        return 1, json.dumps(exc.to_json(version))
    # The runtime must get the error JSON, whatever went wrong.
    log.error("unexpected failure", exc_info=exc)
    return 1, json.dumps(
        CniError(IO_FAILURE, f"xpunet-cni failed: {type(exc).__name__}: {exc}").to_json(version)
    )


def _declared_version(stdin: bytes) -> str:
    try:
        version = load_json(stdin).get("cniVersion")
    except CniError:
        return LATEST
    return version if isinstance(version, str) and version in SUPPORTED_VERSIONS else LATEST


def _grpc_client(conf: NetConf) -> InfraCalls:
    from xpunet.datapath.cni.client import InfraClient

    return InfraClient(conf)


def _pod(inv: Invocation) -> pb.PodIdentity:
    from xpunet._gen.xpunet.infra.v1 import infra_pb2 as pb

    return pb.PodIdentity(
        namespace=inv.pod_namespace,
        name=inv.pod_name,
        uid=inv.pod_uid,
        container_id=inv.container_id,
        netns=inv.netns,
        ifname=inv.ifname,
    )


def _plan(inv: Invocation, att: pb.Attachment) -> Plan:
    from xpunet.datapath.cni.netns import Plan

    return Plan(
        device=att.vnic.device,
        ifname=inv.ifname,
        mac=att.vnic.mac,
        mtu=att.vnic.mtu or 1500,
        addresses=tuple(ip.address for ip in att.ips),
        routes=tuple((r.dst, r.gw) for r in att.routes),
    )


def add(inv: Invocation) -> Flow[dict[str, Any]]:
    from xpunet._gen.xpunet.infra.v1 import infra_pb2 as pb

    if not os.path.exists(inv.netns):
        raise CniError(UNKNOWN_CONTAINER, f"network namespace {inv.netns} does not exist")
    request = pb.AttachRequest(pod=_pod(inv), network=inv.conf.name)
    att = yield Call("Attach", request, pb.Attachment, netlink_next=True)
    plan = _plan(inv, att)
    try:
        yield Plumb(plan, inv.netns)
    except Exception:  # not GeneratorExit (a driver closing the verb): a generator must not yield then
        yield from _undo_add(inv, att, plan)
        raise
    return build_result(inv, att)


def _undo_add(inv: Invocation, att: pb.Attachment, plan: Plan) -> Flow[None]:
    from xpunet._gen.xpunet.infra.v1 import infra_pb2 as pb

    try:
        yield Unplumb(plan, inv.netns, move_back=att.vnic.kind != "veth")
    except Exception:
        log.exception("undoing the pod side of %s failed", inv.container_id)
    try:
        yield Call("Detach", pb.DetachRequest(pod=_pod(inv), network=inv.conf.name), pb.DetachResponse)
    except CniError as exc:
        log.warning("detaching %s after a failed ADD failed: %s", inv.container_id, exc.msg)


def delete(inv: Invocation) -> Flow[None]:
    from xpunet._gen.xpunet.infra.v1 import infra_pb2 as pb

    request = pb.DetachRequest(pod=_pod(inv), network=inv.conf.name)
    response = yield Call("Detach", request, pb.DetachResponse)
    if not response.found or response.attachment.vnic.kind == "veth":
        # Deleting the host side of a veth removes the pod side wherever it is.
        return None
    yield Unplumb(_plan(inv, response.attachment), inv.netns, move_back=True)
    return None


def check(inv: Invocation) -> Flow[None]:
    from xpunet._gen.xpunet.infra.v1 import infra_pb2 as pb

    if not os.path.exists(inv.netns):
        raise CniError(UNKNOWN_CONTAINER, f"network namespace {inv.netns} does not exist")
    request = pb.CheckRequest(pod=_pod(inv), network=inv.conf.name)
    att = yield Call("Check", request, pb.Attachment, netlink_next=True)
    plan = _plan(inv, att)
    seen: Observed = yield Inspect(inv.netns, inv.ifname)
    problems = _differences(inv, plan, seen)
    if problems:
        raise CniError(CHECK_FAILED, f"attachment of {inv.container_id}/{inv.ifname}: " + "; ".join(problems))
    return None


def _differences(inv: Invocation, plan: Plan, seen: Observed) -> list[str]:
    problems: list[str] = []
    if not seen.exists:
        problems.append(f"interface {inv.ifname} is missing")
    else:
        if not seen.up:
            problems.append(f"{inv.ifname} is down")
        if seen.mac.lower() != plan.mac.lower():
            problems.append(f"{inv.ifname} has MAC {seen.mac}, expected {plan.mac}")
        if seen.mtu != plan.mtu:
            problems.append(f"{inv.ifname} has MTU {seen.mtu}, expected {plan.mtu}")
        missing = sorted(set(plan.addresses) - seen.addresses)
        if missing:
            problems.append(f"address(es) {', '.join(missing)} missing")
        wanted = {(str(ipaddress.ip_network(dst)), gw) for dst, gw in plan.routes}  # as the kernel says
        missing_routes = sorted(wanted - seen.routes)
        if missing_routes:
            problems.append(
                "route(s) " + ", ".join(f"{d} via {g or 'link'}" for d, g in missing_routes) + " missing"
            )
    prev = inv.conf.prev_result
    if prev is not None:
        expected = {ip.get("address") for ip in prev.get("ips", []) if isinstance(ip, dict)}
        if expected and not expected <= set(plan.addresses):
            problems.append(
                f"prevResult addresses {sorted(map(str, expected))} differ from the datapath's lease"
            )
    return problems


def status(inv: Invocation) -> Flow[None]:
    from xpunet._gen.xpunet.infra.v1 import infra_pb2 as pb

    try:
        answer: pb.StatusResponse = yield Call("Status", pb.StatusRequest(), pb.StatusResponse)
    except CniError as exc:
        raise CniError(PLUGIN_NOT_AVAILABLE, exc.msg, exc.details) from exc
    if not answer.ready:
        raise CniError(PLUGIN_NOT_AVAILABLE, f"datapath not ready: {answer.reason}")
    pool = answer.pool
    if pool.free == 0 and pool.capacity and pool.attached >= pool.capacity:
        raise CniError(
            PLUGIN_NOT_AVAILABLE, f"vNIC pool empty: all {pool.capacity} {pool.kind} vNICs are attached"
        )
    exhausted = [f"IPv{family}" for family, free in sorted(answer.free_addresses.items()) if free == 0]
    if exhausted:
        raise CniError(PLUGIN_NOT_AVAILABLE, f"pod IPs exhausted ({', '.join(exhausted)})")
    return None


def gc(inv: Invocation) -> Flow[None]:
    from xpunet._gen.xpunet.infra.v1 import infra_pb2 as pb

    valid = [pb.AttachmentKey(container_id=c, ifname=i) for c, i in inv.conf.valid_attachments]
    try:
        response = yield Call("GC", pb.GCRequest(network=inv.conf.name, valid=valid), pb.GCResponse)
    except CniError as exc:
        raise CniError(TRY_AGAIN_LATER, exc.msg, exc.details) from exc
    for key in response.released:
        log.info("gc released %s/%s", key.container_id, key.ifname)
    return None


VERBS: dict[str, Callable[[Invocation], Flow[Any]]] = {
    "ADD": add,
    "DEL": delete,
    "CHECK": check,
    "STATUS": status,
    "GC": gc,
}


# -- result -----------------------------------------------------------------------------------


def build_result(inv: Invocation, att: pb.Attachment) -> dict[str, Any]:
    version = inv.conf.cni_version
    v11 = version == "1.1.0"
    interfaces: list[dict[str, Any]] = []
    if att.vnic.host_ifname:
        interfaces.append({"name": att.vnic.host_ifname})
    pod_iface: dict[str, Any] = {"name": inv.ifname, "mac": att.vnic.mac, "sandbox": inv.netns}
    if v11:
        pod_iface["mtu"] = att.vnic.mtu
        if att.vnic.pci_address:
            pod_iface["pciID"] = att.vnic.pci_address
    interfaces.append(pod_iface)
    index = len(interfaces) - 1
    ips: list[dict[str, Any]] = []
    for ip in att.ips:
        entry: dict[str, Any] = {"address": ip.address, "gateway": ip.gateway, "interface": index}
        if version == "0.4.0":
            entry["version"] = "6" if ":" in ip.address else "4"
        ips.append(entry)
    routes: list[dict[str, Any]] = []
    for route in att.routes:
        item: dict[str, Any] = {"dst": route.dst}
        if route.gw:
            item["gw"] = route.gw
        elif v11:
            item["scope"] = 253  # link
        routes.append(item)
    result: dict[str, Any] = {"cniVersion": version, "interfaces": interfaces, "ips": ips, "routes": routes}
    if inv.conf.dns:
        result["dns"] = dict(inv.conf.dns)
    return result
