"""A garbage collection after every test here, so that a leak fails the test that made it.

A socket, transport or stream the test left open is then finalised (and its
``ResourceWarning`` reported as an error) in this test's teardown, not at
some later collection in an unrelated test; that is how a half-open NATS
connection of a stopped host once surfaced about one full run in three.
It costs a few tens of milliseconds per test.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest


@pytest.fixture(autouse=True)
def _collect_garbage_after_test() -> Iterator[None]:
    yield
    gc.collect()
