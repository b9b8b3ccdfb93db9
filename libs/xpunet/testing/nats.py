"""Pytest fixtures for a real nats-server with JetStream (never a mock).

* ``nats_server`` — one server per test session (sync fixture, no event loop needed).
* ``nats_url`` — its URL.
* ``private_nats_server`` — a server of the test's own, for tests that restart or kill it.
* ``unique_name(prefix)`` / ``bucket_name`` — fresh KV bucket names, so tests sharing
  the session server never see each other's state.
"""

from __future__ import annotations

import itertools
import os
import uuid
from collections.abc import Iterator

import pytest

from xpunet.embedded.nats import NatsServer

_counter = itertools.count()


def unique_name(prefix: str = "t") -> str:
    """A name valid as a KV bucket, stream or subject token, unique across processes and calls."""
    return f"{prefix}-{os.getpid()}-{next(_counter)}-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="session")
def nats_server() -> Iterator[NatsServer]:
    """The session's shared nats-server (JetStream on, temporary store).  Do not restart it."""
    with NatsServer(name="xpunet-test") as server:
        yield server


@pytest.fixture(scope="session")
def nats_url(nats_server: NatsServer) -> str:
    return nats_server.url


@pytest.fixture
def private_nats_server() -> Iterator[NatsServer]:
    """A nats-server for this test alone: restart or kill it freely."""
    with NatsServer(name="xpunet-private") as server:
        yield server


@pytest.fixture
def bucket_name(request: pytest.FixtureRequest) -> str:
    """A fresh KV bucket name for this test."""
    return unique_name("b")
