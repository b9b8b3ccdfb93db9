"""The P4Runtime target's apply over real gRPC into softipu: phases streamed in bounded batches."""

from __future__ import annotations

import asyncio

from xpunet.datapath.p4rt_target import EmbeddedSoftIpuTarget
from xpunet.p4rt.client import ClientSettings
from xpunet.pipeline.diff import Update
from xpunet.pipeline.entries import Exact, TableEntry

WAIT = 10.0
TABLE = "ingress.maglev_backend_v4"
ACTION = "ingress.set_backend_v4"


def bucket(group: int, b: int, addr: int) -> TableEntry:
    return TableEntry(
        TABLE, (("backend_group", Exact(group)), ("bucket", Exact(b))), ACTION, (("addr", addr), ("port", 80))
    )


async def test_phases_apply_in_batches_and_rejections_name_their_updates() -> None:
    target = EmbeddedSoftIpuTarget(ClientSettings(address="", max_batch=3))
    await target.start()
    try:
        async with asyncio.timeout(WAIT):
            await target.wait_ready()
        first = [Update("INSERT", bucket(1, b, 0x0A000000 + b)) for b in range(10)]
        first[4] = Update("INSERT", bucket(1, 1 << 33, 1))  # bucket wider than its 32 bits
        first[8] = Update("INSERT", bucket(1, 0, 2))  # duplicate of first[0], in another batch
        # The second phase changes what the first inserted: it must see the first acknowledged.
        second = [Update("MODIFY", bucket(1, b, 0x0B000000 + b)) for b in (1, 5, 9)]
        second.append(Update("DELETE", bucket(1, 2, 0)))
        result = await target.apply([first, [], second])
        assert result.sent == len(first) + len(second)
        assert [(r.update, r.code) for r in result.rejected] == [
            (first[4], "INVALID_ARGUMENT"),
            (first[8], "ALREADY_EXISTS"),
        ]
        held = await target.read_entries()
        expected = {u.entry for u in first if u not in (first[4], first[8])}
        expected = {e for e in expected if e.match[1][1] not in (Exact(1), Exact(2), Exact(5), Exact(9))}
        expected |= {u.entry for u in second if u.kind == "MODIFY"}
        assert set(held.owned) == expected
        assert not held.foreign
    finally:
        await target.close()
