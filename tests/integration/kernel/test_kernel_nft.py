"""The nft adapter's two backends against the real kernel: namespace placement, errors, equal results.

The libnftables backend opens its netlink socket on a worker thread that
entered the node namespace; these tests check through the ``nft`` binary
(run in and out of the namespace) that what it writes lands there and only
there.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import secrets
import threading
from collections.abc import Iterator

import pytest

from xpunet.datapath.kernel import libnft
from xpunet.datapath.kernel.nft import BackendName, LibBackend, Nft, ProcessBackend, choose_backend
from xpunet.datapath.kernel.render import AFFINITY_LIVE, CHAIN, COUNTER, CT_TIMEOUT, ROUTE
from xpunet.datapath.kernel.ruleset import MARKER_COUNTER, STATIC_COUNTERS
from xpunet.datapath.kernel.target import KernelTarget
from xpunet.datapath.kernel.testbed import in_ns, sh
from xpunet.ir.lb import Affinity, Backend, BackendSet, Frontend, LbServicePort
from xpunet.ir.policy import IPSet, PolicyEndpoint, PolicyRule, PortRange, RuleOrigin
from xpunet.lb.maglev import build_table
from xpunet.p4rt.errors import PermanentTargetError, RetryableTargetError
from xpunet.pipeline.diff import diff
from xpunet.pipeline.entries import TableEntry
from xpunet.pipeline.lowering import NodeIntents, NodePorts, lower

pytestmark = pytest.mark.root

needs_lib = pytest.mark.skipif(libnft.load_library() is None, reason="libnftables.so.1 is not installed")


@pytest.fixture
def netns() -> Iterator[str]:
    name = f"xn{secrets.token_hex(3)}"
    sh("ip", "netns", "add", name)
    try:
        yield name
    finally:
        sh("ip", "netns", "del", name, check=False)


def tables(ns: str | None) -> str:
    out = in_ns(ns, "nft", "list", "tables") if ns else sh("nft", "list", "tables")
    return out.stdout


@needs_lib
async def test_lib_backend_writes_only_inside_the_namespace(netns: str) -> None:
    probe = f"probe_{secrets.token_hex(3)}"
    nft = Nft(netns, backend=LibBackend(netns))
    try:
        await nft.run_script(f"add table inet {probe}")
        assert f"table inet {probe}" in tables(netns)
        assert f"table inet {probe}" not in tables(None)
        # The caller's own thread never left the host namespace.
        assert threading.current_thread() is threading.main_thread()
    finally:
        await nft.close()
        sh("nft", "delete", "table", "inet", probe, check=False)


@needs_lib
async def test_lib_backend_follows_a_namespace_made_again_under_its_name(netns: str) -> None:
    nft = Nft(netns, backend=LibBackend(netns))
    try:
        await nft.run_script("add table inet first")
        sh("ip", "netns", "del", netns)
        with pytest.raises(RetryableTargetError, match="network namespace"):
            await nft.run_script("add table inet second")
        sh("ip", "netns", "add", netns)
        await nft.run_script("add table inet second")
        listed = tables(netns)
        assert "table inet second" in listed
        assert "table inet first" not in listed  # that one went with the old namespace
    finally:
        await nft.close()


@pytest.mark.parametrize("backend", ["lib", "process"])
async def test_backends_list_apply_and_classify_errors(netns: str, backend: str) -> None:
    if backend == "lib" and libnft.load_library() is None:
        pytest.skip("libnftables.so.1 is not installed")
    nft = Nft(netns, backend=LibBackend(netns) if backend == "lib" else ProcessBackend(netns))
    try:
        assert await nft.list_table() is None
        await nft.run_script(
            "add table inet xpunet\n"
            "add set inet xpunet s { type ipv4_addr . inet_proto . inet_service; }\n"
            "add counter inet xpunet c1\n"
            "add counter inet xpunet c2 { packets 5 bytes 700 }"
        )
        # JSON input (the library and `nft -j` parse both forms).
        elem = {"family": "inet", "table": "xpunet", "name": "s", "elem": [{"concat": ["10.0.0.1", 6, 80]}]}
        await nft.apply_text(json.dumps({"nftables": [{"add": {"element": elem}}]}))
        await nft.apply_text("add element inet xpunet s { 10.0.0.2 . 17 . 53 }")
        doc = await nft.list_table()
        assert doc is not None
        sets = [o["set"] for o in doc["nftables"] if "set" in o]
        # Numeric output (nft -n): protocols and ports as numbers.
        assert sorted(map(str, sets[0]["elem"])) == sorted(
            [str({"concat": ["10.0.0.1", 6, 80]}), str({"concat": ["10.0.0.2", 17, 53]})]
        )
        # lib: one netlink dump of the table's counter objects; process: `nft -j list counters`.
        assert await nft.list_counters() == {"c1": (0, 0), "c2": (5, 700)}
        with pytest.raises(PermanentTargetError, match="nosuchset"):
            await nft.apply_text("add element inet xpunet nosuchset { 10.0.0.3 }")
        # The failed transaction changed nothing; the context still works.
        assert "10.0.0.3" not in str(await nft.list_table())
        await nft.delete_table()
        await nft.delete_table()  # idempotent
        assert await nft.list_table() is None
    finally:
        await nft.close()


@pytest.mark.parametrize("backend", ["lib", "process"])
async def test_missing_namespace_is_retryable_not_an_empty_table(backend: str) -> None:
    if backend == "lib" and libnft.load_library() is None:
        pytest.skip("libnftables.so.1 is not installed")
    ns = f"xn{secrets.token_hex(3)}-absent"
    nft = Nft(ns, backend=LibBackend(ns) if backend == "lib" else ProcessBackend(ns))
    try:
        with pytest.raises(RetryableTargetError):
            await nft.list_table()
    finally:
        await nft.close()


def test_choice_of_backend_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="xpunet.datapath.kernel.nft")
    chosen = choose_backend("somens")
    expected = "lib" if libnft.load_library() is not None else "process"
    assert chosen.name == expected
    assert choose_backend("somens", prefer="process").name == "process"
    text = caplog.text
    assert "nft process per transaction" in text
    if expected == "lib":
        assert "libnftables in-process" in text


def _entries() -> tuple[TableEntry, ...]:
    """Every kind of item: ports, anti-spoofing v4/v6, ACL boxes, interval sets, frontends, NodePort."""
    origin = RuleOrigin("d", "b", "ingress", 0)
    eps = (
        PolicyEndpoint("d", "a", "u1", "n1", ("10.0.1.2", "fd00:1::2")),
        PolicyEndpoint(
            "d",
            "b",
            "u2",
            "n1",
            ("10.0.1.3", "fd00:1::3"),
            ingress_isolated=True,
            ingress=(
                PolicyRule(origin, "s1", (PortRange("TCP", 80, 80), PortRange("UDP", 53, 60))),
                PolicyRule(dataclasses.replace(origin, index=1), "s2", (PortRange("TCP", 0, 65535),)),
            ),
        ),
    )
    sets = (IPSet("s1", ("10.0.0.0/16", "fd00::/16")), IPSet("s2", ("10.0.1.0/24", "fd00:1::/64")))
    bs = tuple(Backend(f"10.0.1.{10 + i}", 8080) for i in range(3))
    v4 = LbServicePort(
        7,
        "d",
        "web",
        "ipv4",
        "TCP",
        80,
        frontends=(Frontend("cluster_ip", "10.96.0.7", 80), Frontend("node_port", None, 30007)),
        internal=BackendSet(bs, build_table([b.identity for b in bs], size=13)),
    )
    bs6 = (Backend("fd00:1::3", 8080),)
    v6 = LbServicePort(
        8,
        "d",
        "web6",
        "ipv6",
        "UDP",
        53,
        frontends=(Frontend("cluster_ip", "fd00:96::8", 53),),
        internal=BackendSet(bs6, build_table([b.identity for b in bs6], size=13)),
        affinity=Affinity(60),
    )
    low = lower(
        NodeIntents("n1", eps, sets, (v4, v6)), NodePorts({"d/a": 11, "d/b": 12}, host=1, uplinks=(2,))
    )
    assert low.problems == ()
    return low.entries


@pytest.mark.parametrize("backend", ["lib", "process"])
async def test_script_round_trips_through_the_kernel_listing(netns: str, backend: BackendName) -> None:
    if backend == "lib" and libnft.load_library() is None:
        pytest.skip("libnftables.so.1 is not installed")
    kt = KernelTarget(netns=netns, port_names={11: "xv11", 12: "xv12", 2: "up0"}, nft_backend=backend)
    try:
        result = await kt.apply(diff((), _entries()))
        assert result.problems == ()
        # Timeout policies are named by their content and listed back by name only.
        want = {
            k: None if k[0] == CT_TIMEOUT else v
            for k, v in kt.state.items().items()
            if k[0] not in (ROUTE, AFFINITY_LIVE)
        }
        have = await kt.actual_items()
        static = {(COUNTER, (n,)) for n in (*STATIC_COUNTERS, MARKER_COUNTER)}
        assert {k: v for k, v in have.items() if k[0] != ROUTE and k not in static} == want
        kinds = {k[0].rstrip("0123456789") for k in want}
        assert kinds >= {"acl_in_b", "src6_b", "src4_b", "fe_be6_udp", "np_be4_tcp", "ep_src", CHAIN}
        assert kinds >= {"fe_aff", "aff_rec", "ct_to", CT_TIMEOUT}
        # Everything deleted again in one transaction (chains after the elements that jump to them).
        await kt.apply(diff(_entries(), ()))
        have = await kt.actual_items()
        assert {k for k in have if k[0] != ROUTE} == static
    finally:
        await kt.close()


async def test_rejected_transaction_changes_nothing_and_rolls_the_state_back(netns: str) -> None:
    extra = LbServicePort(
        9,
        "d",
        "extra",
        "ipv4",
        "TCP",
        80,
        frontends=(Frontend("cluster_ip", "10.96.0.9", 80),),
        internal=BackendSet((Backend("10.0.1.20", 8080),), build_table(["10.0.1.20:8080"], size=13)),
    )
    ports = NodePorts({"d/a": 11, "d/b": 12}, host=1, uplinks=(2,))
    with_extra = lower(NodeIntents("n1", (), (), (extra,)), ports).entries
    kt = KernelTarget(netns=netns, port_names={11: "xv11", 12: "xv12", 2: "up0"})
    try:
        await kt.apply(diff((), _entries()))
        items_before = kt.state.items()
        kernel_before = await kt.actual_items()
        # Someone else's element with the same key and another value: the kernel refuses the add.
        in_ns(netns, "nft", "add element inet xpunet fe_be4_tcp { 10.96.0.9 . 80 . 0 : 10.9.9.9 . 1 }")
        with pytest.raises(PermanentTargetError, match="File exists"):
            await kt.apply(diff((), with_extra))
        assert kt.state.items() == items_before
        kernel_after = await kt.actual_items()
        assert kernel_after.pop(("fe_be4_tcp", (0x0A600009, 80, 0))) == (0x0A090909, 1)
        assert kernel_after == kernel_before  # no pick element, no chain: the transaction did nothing
        # reconcile removes the foreign element of our map, then the same apply goes through.
        await kt.reconcile(kt.state.entries.values())
        await kt.apply(diff((), with_extra))
        assert (await kt.actual_items())[("fe_be4_tcp", (0x0A600009, 80, 0))] == (0x0A000114, 8080)
    finally:
        await kt.close()
