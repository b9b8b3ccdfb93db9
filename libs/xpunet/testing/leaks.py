"""A garbage collection after every test, so that a leak fails the test that made it.

A socket, transport or stream a test left open is then finalised (and its
``ResourceWarning`` reported as an error, pytest runs with warnings as errors)
in that test's teardown, not at some later collection in an unrelated test;
that is how a half-open NATS connection of a stopped host once surfaced about
one full run in three (docs/runtime.md "Connections and sockets").  It costs a
few tens of milliseconds per test, so it is used where tests open real
sockets: the integration and end-to-end suites.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest


@pytest.fixture(autouse=True)
def collect_garbage_after_test() -> Iterator[None]:
    yield
    gc.collect()
