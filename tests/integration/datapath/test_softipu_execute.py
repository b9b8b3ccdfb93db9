"""softipu executes packets over the entries the datapath wrote, and its direct counters count them
(read back over real P4Runtime)."""

from __future__ import annotations

import asyncio

from xpunet.datapath.p4rt_target import P4RuntimeTarget
from xpunet.datapath.softipu.execute import PacketExecutor
from xpunet.datapath.testing import PORTS, WITHIN, Buckets, CountingSoftIpu, Runner, seed, service, svc_key
from xpunet.pipeline.interpreter import TCP, TCP_SYN, Drop, Forward, Packet, ToNode
from xpunet.wire import encode_object


async def test_packets_walk_the_installed_entries_and_feed_counters(
    buckets: Buckets, softipu: CountingSoftIpu, runner: Runner
) -> None:
    revision = await seed(buckets)
    async with runner(ports=PORTS) as dp:
        async with asyncio.timeout(WITHIN):
            await dp.wait_converged(revision)
        executor = PacketExecutor(softipu)

        # Pod web → service 10.96.0.7:80: DNAT to one of the two backends, delivered locally.
        syn = Packet(PORTS["shop/web"], "10.1.0.10", "10.96.0.7", TCP, 40000, 80, TCP_SYN)
        result = executor.process(syn, now=1.0)
        assert isinstance(result.verdict, Forward)
        assert result.packet_out.dst in ("10.1.0.10", "10.1.0.11")
        assert result.packet_out.dport == 8080
        # To a pod of node n2: routed to n2's address.
        far = executor.process(
            Packet(PORTS["shop/web"], "10.1.0.10", "10.2.0.5", TCP, 40001, 80, TCP_SYN), now=1.0
        )
        assert isinstance(far.verdict, ToNode)
        assert far.verdict.node_addr == "192.168.0.2"
        # A spoofed source is dropped (fail closed).
        spoofed = executor.process(
            Packet(PORTS["shop/web"], "10.1.0.99", "10.2.0.5", TCP, 1, 80, TCP_SYN), now=1.0
        )
        assert spoofed.verdict == Drop("spoofed_source")

        target = dp.target
        assert isinstance(target, P4RuntimeTarget)
        counters = await target.read_counters()
        frontend = next(h.entry for h in result.hits if h.table == "service_frontend_v4" and h.entry)
        assert counters[frontend.key] == (1, syn.length)
        port_entry = next(h.entry for h in result.hits if h.table == "port_info" and h.entry)
        assert counters[port_entry.key][0] == 3  # three packets entered on the pod's port

        # A change written through the datapath is what the next packet sees.
        rev = await buckets.intents.put(svc_key(7), encode_object(service(7, "10.96.0.7", ("10.1.0.11",))))
        async with asyncio.timeout(WITHIN):
            await dp.wait_converged(rev)
        fresh = executor.process(
            Packet(PORTS["shop/db"], "10.1.0.11", "10.96.0.7", TCP, 40002, 80, TCP_SYN), now=2.0
        )
        assert fresh.packet_out.dst == "10.1.0.11"
