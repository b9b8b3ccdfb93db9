"""Incremental LPM → per-bit intervals (``kernel/lpm.py``) equals a full sweep after every change."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from xpunet.datapath.kernel.lpm import FULL_SWEEP_AT, LpmIntervals, bit_intervals
from xpunet.datapath.kernel.render import KernelState
from xpunet.pipeline.diff import diff
from xpunet.pipeline.entries import Lpm, TableEntry

WIDTH = 8


@st.composite
def prefixes(draw: st.DrawFn) -> tuple[int, int]:
    plen = draw(st.integers(0, WIDTH))
    net = draw(st.integers(0, (1 << plen) - 1)) << (WIDTH - plen) if plen else 0
    return (net, plen)


# (prefix, bits or None to remove); a batch is flushed at once.
CHANGE = st.tuples(prefixes(), st.one_of(st.none(), st.integers(0, 7)))


def flat(bits: dict[int, list[tuple[int, int]]]) -> set[tuple[int, tuple[int, int]]]:
    return {(b, x) for b, xs in bits.items() for x in xs}


@settings(max_examples=200, deadline=None)
@given(st.lists(st.lists(CHANGE, min_size=1, max_size=6), min_size=1, max_size=8))
def test_incremental_equals_full_sweep(batches: list[list[tuple[tuple[int, int], int | None]]]) -> None:
    lpm = LpmIntervals(WIDTH)
    state: set[tuple[int, tuple[int, int]]] = set()
    for batch in batches:
        for p, bits in batch:
            if bits is None:
                lpm.remove(p)
            else:
                lpm.put(p, bits)
        gone, came = lpm.flush()
        assert not gone & came
        assert gone <= state
        assert not came & state
        state = (state - gone) | came
        want = bit_intervals(lpm.prefixes, WIDTH)
        assert lpm.bits == want
        assert state == flat(want)


def test_one_change_in_a_large_table_touches_only_its_span() -> None:
    lpm = LpmIntervals(32)
    for i in range(4 * FULL_SWEEP_AT):
        lpm.put(((10 << 24) + (i << 8), 24), 1 << (i % 3))
    lpm.flush()
    before = flat(lpm.bits)
    # A /32 inside the 5th /24 with another bit: only that /24's interval changes.
    lpm.put(((10 << 24) + (4 << 8) + 7, 32), 0b1000)
    gone, came = lpm.flush()
    base = (10 << 24) + (4 << 8)  # its /24 carries bit 4 % 3 = 1
    assert gone == {(1, (base, base + 255))}
    assert came == {(1, (base, base + 6)), (3, (base + 7, base + 7)), (1, (base + 8, base + 255))}
    assert (before - gone) | came == flat(lpm.bits)


def ipset_entry(p: tuple[int, int], bits: int) -> TableEntry:
    net, plen = p
    return TableEntry(
        "ingress.ip_set_dst_v4",
        (("dst_addr", Lpm(net << 24, plen)),),
        "ingress.set_dst_sets",
        (("sets", bits),),
        0,
        "",
    )


@settings(max_examples=50, deadline=None)
@given(st.lists(st.dictionaries(prefixes(), st.integers(1, 7), max_size=12), min_size=1, max_size=5))
def test_kernel_state_items_follow_the_table(tables: list[dict[tuple[int, int], int]]) -> None:
    # The top 8 bits of IPv4 addresses, so the hypothesis space stays small.
    s = KernelState({})
    prev: tuple[TableEntry, ...] = ()
    for table in tables:
        cur = tuple(sorted((ipset_entry(p, b) for p, b in table.items()), key=lambda e: repr(e.key)))
        s.update(diff(prev, cur).updates)
        prev = cur
        wide = {(net << 24, plen): b for (net, plen), b in table.items()}
        want = {(f"dst4_b{b}", (x,)) for b, xs in bit_intervals(wide, 32).items() for x in xs}
        assert set(s.items()) == want
