"""The kernel target freezes the heap after a large apply, and only then."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from xpunet.datapath.kernel.render import Delta
from xpunet.datapath.kernel.target import LARGE_DELTA, _keep_long_lived


@pytest.fixture
def unfrozen() -> Iterator[None]:
    gc.unfreeze()
    try:
        yield
    finally:
        gc.unfreeze()


def test_small_delta_leaves_the_collector_alone(unfrozen: None) -> None:
    _keep_long_lived(Delta(add={("pod_ifs", (f"xv{i}",)): None for i in range(100)}))
    assert gc.get_freeze_count() == 0


def test_large_delta_freezes_what_exists(unfrozen: None) -> None:
    _keep_long_lived(Delta(add={("pod_ifs", (f"xv{i}",)): None for i in range(LARGE_DELTA)}))
    assert gc.get_freeze_count() > 0
