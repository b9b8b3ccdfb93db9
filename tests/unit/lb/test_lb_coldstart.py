"""Cold-start speed-ups change nothing: deferred table batches, table workers, IPv4 fast path, GC pause."""

from __future__ import annotations

import asyncio
import gc
import ipaddress
from collections.abc import Iterator, Sequence
from concurrent import futures
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from xpunet.ir.lb import LbNodeOverride, LbServicePort
from xpunet.lb.coldstart import ColdGc, ColdStart, TablePool
from xpunet.lb.compiler import Identities, compile_service
from xpunet.lb.endpoints import ipv4_canonical, parse_slice
from xpunet.lb.maglev import build_table
from xpunet.lb.state import LbCompiler
from xpunet.model.objects import (
    Endpoint,
    EndpointPort,
    EndpointSlice,
    Labels,
    Node,
    NodeAddress,
    Service,
    ServicePort,
)


def _ids(n: int, base: int) -> Identities:
    return tuple(f"10.{(base + i) >> 8 & 255}.{(base + i) & 255}.7,{8000 + i % 3}" for i in range(n))


BATCH: list[Identities] = [_ids(1 + i % 12, i * 16) for i in range(40)] + [_ids(300, 5000)]


def test_worker_pool_builds_the_same_tables() -> None:
    pool = TablePool(1, min_work=1, chunk_work=3000)
    try:
        got = pool(BATCH)
    finally:
        pool.close()
    assert pool.parallel_batches == 1
    assert got == [build_table(ident) for ident in BATCH]


def test_prefetched_tables_are_used_and_wrong_guesses_ignored() -> None:
    pool = TablePool(1, min_work=1, chunk_work=3000)
    try:
        guesses = [*BATCH[:20], _ids(4, 9000)]  # the last one is never asked for
        for ident in guesses:
            pool.prefetch(ident)
        # Let the workers finish what was submitted, so the count below is exact.
        futures.wait([f for _, f in pool._early])  # the test looks inside the pool on purpose
        submitted = sum(len(chunk) for chunk, _ in pool._early)
        got = pool(BATCH)
    finally:
        pool.close()
    assert got == [build_table(ident) for ident in BATCH]
    assert 0 < pool.prefetched == min(submitted, 20)
    pool.prefetch(BATCH[0])  # after close: ignored
    assert pool(BATCH[:1]) == [build_table(BATCH[0])]


@pytest.mark.parametrize("workers", [0, 1])
def test_small_batches_without_workers_or_after_close_stay_in_process(workers: int) -> None:
    pool = TablePool(workers, min_work=10**9)
    assert pool(BATCH) == [build_table(ident) for ident in BATCH]
    pool.close()
    big = TablePool(workers, min_work=1)
    big.close()
    assert big(BATCH[:5]) == [build_table(ident) for ident in BATCH[:5]]
    assert pool.parallel_batches == big.parallel_batches == 0


def test_bad_pool_arguments() -> None:
    with pytest.raises(ValueError, match="workers"):
        TablePool(-1)


def _cluster() -> list[Service | EndpointSlice | Node]:
    objs: list[Service | EndpointSlice | Node] = [
        Node(name=f"n{i}", addresses=(NodeAddress("InternalIP", f"172.16.0.{i + 1}"),)) for i in range(3)
    ]
    for s in range(6):
        objs.append(
            Service(
                namespace="ns",
                name=f"s{s}",
                type="NodePort" if s % 2 else "ClusterIP",
                cluster_ips=(f"10.96.0.{s + 1}",),
                ports=(ServicePort(80, name="http", node_port=30000 + s),),
                selector=Labels({"app": "x"}),
                # Local policies give node overrides, whose tables are deferred too.
                external_traffic_policy="Local" if s == 1 else "Cluster",
                internal_traffic_policy="Local" if s == 2 else "Cluster",
            )
        )
        # Services 3 and 4 share their backends: one table for both.
        first = 3 if s in (3, 4) else s
        objs.append(
            EndpointSlice(
                namespace="ns",
                name=f"s{s}-a",
                service=f"s{s}",
                address_type="IPv4",
                endpoints=tuple(
                    Endpoint(addresses=(f"10.0.{first}.{i}",), node_name=f"n{i % 3}") for i in range(1, 6)
                ),
                ports=(EndpointPort(8080, name="http"),),
            )
        )
    return objs


def test_deferred_tables_equal_direct_compile_and_are_built_once() -> None:
    batches: list[Sequence[Identities]] = []

    def builder(idents: Sequence[Identities]) -> list[tuple[int, ...]]:
        batches.append(idents)
        return [build_table(i) for i in idents]

    c = LbCompiler(table_builder=builder)
    objs = _cluster()
    for o in objs:
        c.update(o)
    c.flush()
    assert len(batches) == 1
    assert len(batches[0]) == len(set(batches[0]))  # deduplicated across Services
    nodes = {o.name: o for o in objs if isinstance(o, Node)}
    ids = iter(range(1, 1000))
    direct: dict[str, object] = {}
    for o in objs:
        if isinstance(o, Service):
            slices = [parse_slice(e) for e in objs if isinstance(e, EndpointSlice) and e.service == o.name]
            direct.update(compile_service(o, slices, nodes, lambda _s: next(ids)).intents)
    got = {k: v for k, v in c.intents().items() if k in direct}
    assert len(got) == len(direct) > 6  # node overrides included
    # Ids come from different allocators; everything else must match.
    assert {k: _strip_id(v) for k, v in got.items()} == {k: _strip_id(v) for k, v in direct.items()}
    # A later change rebuilds only the changed set, reusing the rest.
    c.update(
        EndpointSlice(
            namespace="ns",
            name="s0-a",
            service="s0",
            address_type="IPv4",
            endpoints=(Endpoint(addresses=("10.9.9.9",), node_name="n0"),),
            ports=(EndpointPort(8080, name="http"),),
        )
    )
    changes = c.flush()
    assert batches[1] == [("10.9.9.9,8080",)]
    assert set(changes.intents) == {"global.lb.svc.ns.s0.tcp-80.ipv4"}


def _strip_id(value: object) -> object:
    return replace(value, id=0) if isinstance(value, LbServicePort | LbNodeOverride) else value


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.one_of(st.integers(0, 300).map(str), st.sampled_from(["", "00", "01", "a", "+1", " 1", "\u0661"])),
        min_size=1,
        max_size=6,
    ).map(".".join)
)
def testipv4_canonical_path_agrees_with_ipaddress(text: str) -> None:
    fast = ipv4_canonical(text)
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        assert fast is None
        return
    # The fast path may decline (None), but what it accepts is exact and already canonical.
    assert fast is None or (fast == int(addr) and text == addr.compressed)


@pytest.fixture
def gc_enabled() -> Iterator[None]:
    was = gc.isenabled()
    gc.enable()
    try:
        yield
    finally:
        gc.unfreeze()
        if not was:
            gc.disable()


@pytest.mark.usefixtures("gc_enabled")
def test_cold_gc_pauses_then_freezes() -> None:
    cold = ColdGc()
    cold.pause()
    assert not gc.isenabled()
    cold.resume()
    assert gc.isenabled()
    assert gc.get_freeze_count() > 0
    cold.resume()  # idempotent
    gc.disable()
    cold.pause()  # someone else turned it off: left alone
    cold.resume()
    assert not gc.isenabled()


@pytest.mark.usefixtures("gc_enabled")
async def test_cold_start_gives_the_gc_back_after_its_deadline() -> None:
    cold = ColdStart(0, max_gc_pause=0.0)
    cold.begin()
    assert not gc.isenabled()
    for _ in range(200):
        if gc.isenabled():
            break
        await asyncio.sleep(0.01)
    assert gc.isenabled()
    cold.end()
    cold.begin()  # after end: nothing
    assert gc.isenabled()
