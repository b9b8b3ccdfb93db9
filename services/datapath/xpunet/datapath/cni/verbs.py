"""The CNI verbs of `xpunet-cni` (spec 1.1: ADD, DEL, CHECK, STATUS, GC, VERSION): `run(env, stdin)`.

Runs in the exec'ed plugin process, or in the resident agent (see agent.py).
Takes the CNI_* environment and the network config, asks the datapath's
infra API for the pod's vNIC and addresses, plumbs the pod side with pyroute2
and returns the result JSON.  Every failure returns the spec's error JSON and
a non-zero code; an ADD that fails after the datapath attached undoes the pod
side and detaches, so nothing is left half-attached.

gRPC, protobuf and pyroute2 are imported only by the verbs that need them
(ADD imports pyroute2 while its Attach call is in flight): in the exec'ed
plugin every import is paid for on each call.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Coroutine, Mapping
from typing import TYPE_CHECKING, Any, TypeAlias, TypeVar

from xpunet.datapath.cni.config import LATEST, SUPPORTED_VERSIONS, Invocation, load_json, parse_invocation
from xpunet.datapath.cni.errors import (
    CHECK_FAILED,
    IO_FAILURE,
    PLUGIN_NOT_AVAILABLE,
    TRY_AGAIN_LATER,
    UNKNOWN_CONTAINER,
    CniError,
)

if TYPE_CHECKING:
    from xpunet._gen.xpunet.infra.v1 import infra_pb2 as pb
    from xpunet.datapath.cni.client import InfraCalls
    from xpunet.datapath.cni.config import NetConf
    from xpunet.datapath.cni.netns import Plan

Connect: TypeAlias = "Callable[[NetConf], InfraCalls]"  # the infra API named by a network config

log = logging.getLogger("xpunet.cni")


def run(env: Mapping[str, str], stdin: bytes, *, connect: Connect | None = None) -> tuple[int, str]:
    """One plugin run: (exit code, stdout).  `connect`: how to reach the infra API (default gRPC)."""
    version = _declared_version(stdin)
    try:
        if env.get("CNI_COMMAND") == "VERSION":
            return 0, json.dumps({"cniVersion": version, "supportedVersions": list(SUPPORTED_VERSIONS)})
        inv = parse_invocation(env, stdin)
        handler = {"ADD": cmd_add, "DEL": cmd_del, "CHECK": cmd_check, "STATUS": cmd_status, "GC": cmd_gc}
        result = handler[inv.command](inv, connect or _grpc_client)
        return 0, json.dumps(result) if result is not None else ""
    except CniError as exc:
        log.warning("%s%s", exc.msg, f": {exc.details}" if exc.details else "")
        return 1, json.dumps(exc.to_json(version))
    except Exception as exc:  # the runtime must get the error JSON, whatever went wrong
        log.exception("unexpected failure")
        return 1, json.dumps(
            CniError(IO_FAILURE, f"xpunet-cni failed: {type(exc).__name__}: {exc}").to_json(version)
        )


def _declared_version(stdin: bytes) -> str:
    try:
        version = load_json(stdin).get("cniVersion")
    except CniError:
        return LATEST
    return version if isinstance(version, str) and version in SUPPORTED_VERSIONS else LATEST


# -- verbs ------------------------------------------------------------------------------------

T = TypeVar("T")


def _run_async(work: Coroutine[Any, Any, T]) -> T:
    import asyncio  # only the verbs that touch netlink pay for it

    return asyncio.run(work)


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


def cmd_add(inv: Invocation, connect: Connect) -> dict[str, Any]:
    from xpunet._gen.xpunet.infra.v1 import infra_pb2 as pb

    if not os.path.exists(inv.netns):
        raise CniError(UNKNOWN_CONTAINER, f"network namespace {inv.netns} does not exist")
    client = connect(inv.conf)
    try:
        pending = client.start(
            "Attach", pb.AttachRequest(pod=_pod(inv), network=inv.conf.name), pb.Attachment
        )
        from xpunet.datapath.cni import netns  # loads pyroute2 while the datapath works

        att = pending.result()
        plan = _plan(inv, att)
        try:
            netns.plumb(plan, inv.netns)
        except BaseException as exc:
            _undo_add(client, inv, att, plan)
            if isinstance(exc, netns.MissingNetnsError):
                raise CniError(UNKNOWN_CONTAINER, str(exc)) from exc
            if isinstance(exc, netns.NetnsError):
                raise CniError(IO_FAILURE, str(exc)) from exc
            raise
        return build_result(inv, att)
    finally:
        client.close()


def _undo_add(client: InfraCalls, inv: Invocation, att: pb.Attachment, plan: Plan) -> None:
    from xpunet._gen.xpunet.infra.v1 import infra_pb2 as pb
    from xpunet.datapath.cni import netns

    try:
        _run_async(netns.unplumb(plan, inv.netns, move_back=att.vnic.kind != "veth"))
    except Exception:
        log.exception("undoing the pod side of %s failed", inv.container_id)
    try:
        client.call("Detach", pb.DetachRequest(pod=_pod(inv), network=inv.conf.name), pb.DetachResponse)
    except CniError as exc:
        log.warning("detaching %s after a failed ADD failed: %s", inv.container_id, exc.msg)


def cmd_del(inv: Invocation, connect: Connect) -> None:
    from xpunet._gen.xpunet.infra.v1 import infra_pb2 as pb

    client = connect(inv.conf)
    try:
        response = client.call(
            "Detach", pb.DetachRequest(pod=_pod(inv), network=inv.conf.name), pb.DetachResponse
        )
    finally:
        client.close()
    if not response.found or response.attachment.vnic.kind == "veth":
        # Deleting the host side of a veth removes the pod side wherever it is.
        return
    from xpunet.datapath.cni import netns

    try:
        _run_async(netns.unplumb(_plan(inv, response.attachment), inv.netns, move_back=True))
    except netns.NetnsError as exc:
        raise CniError(IO_FAILURE, str(exc)) from exc
    return


def cmd_check(inv: Invocation, connect: Connect) -> None:
    from xpunet._gen.xpunet.infra.v1 import infra_pb2 as pb

    if not os.path.exists(inv.netns):
        raise CniError(UNKNOWN_CONTAINER, f"network namespace {inv.netns} does not exist")
    client = connect(inv.conf)
    try:
        pending = client.start("Check", pb.CheckRequest(pod=_pod(inv), network=inv.conf.name), pb.Attachment)
        from xpunet.datapath.cni import netns

        att = pending.result()
    finally:
        client.close()
    plan = _plan(inv, att)
    try:
        seen = _run_async(netns.inspect(inv.netns, inv.ifname))
    except netns.NetnsError as exc:
        raise CniError(IO_FAILURE, str(exc)) from exc
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
        missing_routes = sorted(netns.routes_of(plan.routes) - seen.routes)
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
    if problems:
        raise CniError(CHECK_FAILED, f"attachment of {inv.container_id}/{inv.ifname}: " + "; ".join(problems))
    return


def cmd_status(inv: Invocation, connect: Connect) -> None:
    from xpunet._gen.xpunet.infra.v1 import infra_pb2 as pb

    client = connect(inv.conf)
    try:
        status = client.call("Status", pb.StatusRequest(), pb.StatusResponse)
    except CniError as exc:
        raise CniError(PLUGIN_NOT_AVAILABLE, exc.msg, exc.details) from exc
    finally:
        client.close()
    if not status.ready:
        raise CniError(PLUGIN_NOT_AVAILABLE, f"datapath not ready: {status.reason}")
    pool = status.pool
    if pool.free == 0 and pool.capacity and pool.attached >= pool.capacity:
        raise CniError(
            PLUGIN_NOT_AVAILABLE, f"vNIC pool empty: all {pool.capacity} {pool.kind} vNICs are attached"
        )
    exhausted = [f"IPv{family}" for family, free in sorted(status.free_addresses.items()) if free == 0]
    if exhausted:
        raise CniError(PLUGIN_NOT_AVAILABLE, f"pod IPs exhausted ({', '.join(exhausted)})")
    return


def cmd_gc(inv: Invocation, connect: Connect) -> None:
    from xpunet._gen.xpunet.infra.v1 import infra_pb2 as pb

    valid = [pb.AttachmentKey(container_id=c, ifname=i) for c, i in inv.conf.valid_attachments]
    client = connect(inv.conf)
    try:
        response = client.call("GC", pb.GCRequest(network=inv.conf.name, valid=valid), pb.GCResponse)
    except CniError as exc:
        raise CniError(TRY_AGAIN_LATER, exc.msg, exc.details) from exc
    finally:
        client.close()
    for key in response.released:
        log.info("gc released %s/%s", key.container_id, key.ifname)
    return


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
