"""new_entry (the lowering's fast constructor) builds the very TableEntry the dataclass would."""

from __future__ import annotations

import copy
import dataclasses
import pickle

from xpunet.pipeline.diff import Update, new_update
from xpunet.pipeline.entries import Exact, Lpm, TableEntry, Ternary, new_entry


def test_new_entry_is_the_constructors_entry() -> None:
    match = (("dst_addr", Lpm(0x0A000000, 8)), ("protocol", Ternary(6, 0xFF)))
    args = ("xpunet_control.t", match, "xpunet_control.a", (("port", 7),), 5, "origin")
    fast, slow = new_entry(*args), TableEntry(*args)
    assert type(fast) is TableEntry
    assert fast == slow
    assert hash(fast) == hash(slow)
    assert repr(fast) == repr(slow)
    assert fast.key == slow.key == ("xpunet_control.t", match, 5)
    assert fast.origin == "origin"
    assert fast.priority == 5
    for other in (pickle.loads(pickle.dumps(fast)), copy.copy(fast), copy.deepcopy(fast)):
        assert other == fast
        assert other.key == fast.key
    moved = dataclasses.replace(fast, priority=6)
    assert moved.key == ("xpunet_control.t", match, 6)


def test_origin_takes_no_part_in_equality() -> None:
    a = new_entry("t", (("f", Exact(1)),), "a", (), 0, "one")
    assert a == TableEntry("t", (("f", Exact(1)),), "a", (), 0, "two")
    assert Exact(3) == Exact(3)
    assert hash(Exact(3)) == hash(Exact(3))
    assert Exact(3) != Exact(4)


def test_new_update_is_the_constructors_update() -> None:
    e = new_entry("t", (("f", Exact(1)),), "a", (), 0, "o")
    fast, slow = new_update("MODIFY", e), Update("MODIFY", e)
    assert type(fast) is Update
    assert fast == slow
    assert hash(fast) == hash(slow)
    assert repr(fast) == repr(slow)
    assert pickle.loads(pickle.dumps(fast)) == slow
