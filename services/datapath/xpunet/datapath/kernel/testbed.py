"""A test bed for the kernel target: a node namespace and pod namespaces joined by veth pairs.

Pods reach the node through `eth0` with a default route to a gateway address
the node side of every veth carries (as the datapath's veth vNICs do); the
node routes to pods with the host routes the kernel target installs.  Real
TCP/UDP flows run through small Python programs started inside the pod
namespaces with `ip netns exec`.  Everything is removed in `close()`, which
the fixtures call in `finally`.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from xpunet.pipeline.diff import diff

if TYPE_CHECKING:
    from xpunet.datapath.kernel.target import KernelTarget
    from xpunet.pipeline.entries import TableEntry

GATEWAY4 = "169.254.1.1"
GATEWAY6 = "fd00:ffff::1"

SERVER = r"""
import socket, sys, threading
name = sys.argv[1]
def serve(fam, port, kind):
    s = socket.socket(fam, socket.SOCK_STREAM if kind == "tcp" else socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if fam == socket.AF_INET6:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    s.bind(("::" if fam == socket.AF_INET6 else "0.0.0.0", port))
    if kind == "tcp":
        s.listen(64)
        while True:
            c, peer = s.accept()
            c.sendall(f"{name} {peer[0]}".encode()); c.close()
    else:
        while True:
            data, peer = s.recvfrom(100)
            s.sendto(f"{name} {peer[0]}".encode(), peer)
for spec in sys.argv[2:]:
    kind, port = spec.split("/")
    for fam in (socket.AF_INET, socket.AF_INET6):
        threading.Thread(target=serve, args=(fam, int(port), kind), daemon=True).start()
print("ready", flush=True)
threading.Event().wait()
"""

CLIENT = r"""
import json, socket, sys
from concurrent.futures import ThreadPoolExecutor
def attempt(spec):
    host, port, kind, timeout, sport = spec
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket.socket(fam, socket.SOCK_STREAM if kind == "tcp" else socket.SOCK_DGRAM)
    s.settimeout(timeout)
    if sport:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("::" if fam == socket.AF_INET6 else "0.0.0.0", sport))
    try:
        if kind == "tcp":
            s.connect((host, port)); return "OK " + s.recv(100).decode()
        s.sendto(b"x", (host, port)); return "OK " + s.recvfrom(100)[0].decode()
    except ConnectionRefusedError:
        return "REFUSED"
    except (TimeoutError, socket.timeout):
        return "TIMEOUT"
    except OSError as exc:
        return "ERROR " + str(exc)
    finally:
        s.close()
specs = json.loads(sys.argv[1])
if sys.argv[2] == "parallel":
    with ThreadPoolExecutor(64) as pool:
        out = list(pool.map(attempt, specs))
else:
    out = [attempt(spec) for spec in specs]
print(json.dumps(out))
"""


def sh(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, check=check, capture_output=True, text=True, timeout=30)


def in_ns(ns: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return sh("ip", "netns", "exec", ns, *args, check=check)


def connect_from(
    ns: str,
    targets: list[tuple[str, int]],
    *,
    kind: str = "tcp",
    timeout: float = 1.5,
    sport: int = 0,
    parallel: bool = False,
) -> list[str]:
    """One attempt per (address, port) from namespace ``ns`` (a pod's, or a node's own stack)."""
    spec = [[h, port, kind, timeout, sport] for h, port in targets]
    mode = "parallel" if parallel else "serial"
    out = in_ns(ns, sys.executable, "-c", CLIENT, json.dumps(spec), mode).stdout
    result: list[str] = json.loads(out)
    return result


@dataclass
class Pod:
    name: str
    ns: str
    port: int
    ifname: str  # host side, in the node namespace
    v4: str
    v6: str


@dataclass
class Topology:
    prefix: str = field(default_factory=lambda: f"xk{secrets.token_hex(3)}")
    pods: dict[str, Pod] = field(default_factory=dict)
    servers: list[subprocess.Popen[str]] = field(default_factory=list)
    namespaces: list[str] = field(default_factory=list)

    @property
    def node(self) -> str:
        return f"{self.prefix}-node"

    def create_node(self) -> None:
        sh("ip", "netns", "add", self.node)
        self.namespaces.append(self.node)
        in_ns(self.node, "ip", "link", "set", "lo", "up")
        sysctls = ("net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1", "net.ipv4.conf.all.rp_filter=0")
        for key in sysctls:
            in_ns(self.node, "sysctl", "-qw", key)

    def add_pod(self, name: str, port: int, v4: str, v6: str) -> Pod:
        ns = f"{self.prefix}-{name}"
        ifname = f"xv{port}"
        sh("ip", "netns", "add", ns)
        self.namespaces.append(ns)
        in_ns(self.node, "ip", "link", "add", ifname, "type", "veth", "peer", "name", "eth0", "netns", ns)
        in_ns(self.node, "ip", "addr", "add", f"{GATEWAY4}/32", "dev", ifname)
        in_ns(self.node, "ip", "-6", "addr", "add", f"{GATEWAY6}/128", "dev", ifname, "nodad")
        in_ns(self.node, "ip", "link", "set", ifname, "up")
        in_ns(ns, "ip", "link", "set", "lo", "up")
        in_ns(ns, "ip", "addr", "add", f"{v4}/32", "dev", "eth0")
        in_ns(ns, "ip", "-6", "addr", "add", f"{v6}/128", "dev", "eth0", "nodad")
        in_ns(ns, "ip", "link", "set", "eth0", "up")
        in_ns(ns, "ip", "route", "add", GATEWAY4, "dev", "eth0", "scope", "link")
        in_ns(ns, "ip", "route", "add", "default", "via", GATEWAY4, "dev", "eth0")
        in_ns(ns, "ip", "-6", "route", "add", GATEWAY6, "dev", "eth0")
        in_ns(ns, "ip", "-6", "route", "add", "default", "via", GATEWAY6, "dev", "eth0")
        pod = Pod(name, ns, port, ifname, v4, v6)
        self.pods[name] = pod
        return pod

    def serve(self, pod: str, *specs: str) -> None:
        """Start a server in ``pod`` answering "<pod> <peer address>" on each ``tcp/N`` or ``udp/N``."""
        p = self.pods[pod]
        proc = subprocess.Popen(
            ["ip", "netns", "exec", p.ns, sys.executable, "-c", SERVER, pod, *specs],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        self.servers.append(proc)
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"

    def connect(
        self,
        pod: str,
        targets: list[tuple[str, int]],
        *,
        kind: str = "tcp",
        timeout: float = 1.5,
        sport: int = 0,
        parallel: bool = False,
    ) -> list[str]:
        """One attempt per (address, port) from ``pod``: "OK <server> <peer>", "REFUSED" or "TIMEOUT"."""
        return connect_from(
            self.pods[pod].ns, targets, kind=kind, timeout=timeout, sport=sport, parallel=parallel
        )

    def close(self) -> None:
        for proc in self.servers:
            proc.kill()
            proc.wait(timeout=10)
            if proc.stdout is not None:
                proc.stdout.close()
        for ns in reversed(self.namespaces):
            sh("ip", "netns", "del", ns, check=False)
        deadline = time.monotonic() + 5
        left = [ns for ns in self.namespaces if os.path.exists(f"/run/netns/{ns}")]
        while left and time.monotonic() < deadline:
            left = [ns for ns in left if os.path.exists(f"/run/netns/{ns}")]
            time.sleep(0.05)


@asynccontextmanager
async def programmed(
    targets: dict[str, KernelTarget], entries: Callable[[str], Iterable[TableEntry]]
) -> AsyncIterator[dict[str, KernelTarget]]:
    """Each node's target programmed from empty with ``entries(node)`` for the block, closed after it.

    Raises RuntimeError naming the node when an apply reports problems or route errors.
    """
    try:
        for node, kt in targets.items():
            result = await kt.apply(diff((), tuple(entries(node))))
            if result.problems or result.route_errors:
                raise RuntimeError(
                    f"node {node} not programmed cleanly: {result.problems} {result.route_errors}"
                )
        yield targets
    finally:
        for kt in targets.values():
            await kt.close()
