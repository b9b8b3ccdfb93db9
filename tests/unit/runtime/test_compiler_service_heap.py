"""When the shared compiler loop freezes the heap (after the first flush, then after enough churn) and
when it collects the young generation (after every flush that does not freeze)."""

from __future__ import annotations

import pytest

from xpunet.runtime.compiler_service import HeapFreezer


class Recorder:
    def __init__(self) -> None:
        self.calls = 0

    def __call__(self) -> None:
        self.calls += 1


class Collections:
    def __init__(self) -> None:
        self.generations: list[int] = []

    def __call__(self, generation: int) -> None:
        self.generations.append(generation)


@pytest.mark.parametrize(
    ("churns", "expected"),
    [
        pytest.param([0], 1, id="first-flush-even-if-it-wrote-nothing"),
        pytest.param([50_000, 1, 1, 1], 1, id="small-flushes-after-the-cold-start"),
        pytest.param([50_000, 999, 1], 2, id="churn-adds-up-across-flushes"),
        pytest.param([50_000, 1_000, 1_000, 1], 3, id="one-big-flush-each"),
        pytest.param([10, 400, 400, 199, 1], 2, id="counter-restarts-after-a-freeze"),
    ],
)
def test_freezes_after_first_flush_and_after_churn(churns: list[int], expected: int) -> None:
    freeze, collect = Recorder(), Collections()
    heap = HeapFreezer(refreeze_churn=1_000, freeze=freeze, collect=collect)
    for churn in churns:
        heap.flushed(churn)
    assert freeze.calls == expected
    assert heap.freezes == expected
    # Each flush either freezes or collects the young objects it left.
    assert len(collect.generations) == len(churns) - expected


def test_every_tenth_young_collection_includes_gen1() -> None:
    collect = Collections()
    heap = HeapFreezer(refreeze_churn=10**9, freeze=Recorder(), collect=collect)
    for _ in range(31):
        heap.flushed(1)
    assert collect.generations == ([0] * 9 + [1]) * 3
