"""CNI integration fixtures: a "host" network namespace for the datapath's veth pairs, pod namespaces,
and AttachServers on a unix socket.  Every namespace is removed at teardown (its links go with it).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from xpunet.datapath.attach.server import AttachServer
from xpunet.datapath.attach.settings import AttachSettings
from xpunet.datapath.cni.runtime import drop_ns, make_ns

POD_CIDRS = ("10.244.7.0/24", "fd00:10:244:7::/64")


@pytest.fixture
def host_ns() -> Iterator[str]:
    name = make_ns("xpt-host")
    try:
        yield name
    finally:
        drop_ns(name)


@pytest.fixture
def pod_ns() -> Iterator[Callable[[], str]]:
    made: list[str] = []

    def create() -> str:
        made.append(make_ns("xpt-pod"))
        return made[-1]

    try:
        yield create
    finally:
        for name in made:
            drop_ns(name)


@pytest.fixture
def settings(tmp_path: Path, host_ns: str) -> AttachSettings:
    return AttachSettings(
        pod_cidrs=POD_CIDRS,
        socket_path=str(tmp_path / "infra.sock"),
        state_path=str(tmp_path / "state.json"),
        host_netns=host_ns,
        pool_size=3,
        low_water=2,
    )


ServerFactory = Callable[..., Awaitable[AttachServer]]


@pytest.fixture
async def start_server(settings: AttachSettings) -> AsyncIterator[ServerFactory]:
    """Start AttachServers (with setting overrides); all are stopped at teardown."""
    running: list[AttachServer] = []

    async def start(**overrides: Any) -> AttachServer:
        server = AttachServer(replace(settings, **overrides))
        await server.start()
        running.append(server)
        return server

    try:
        yield start
    finally:
        for server in running:
            await server.stop(grace=0)


@pytest.fixture
async def server(start_server: ServerFactory) -> AttachServer:
    return await start_server()
