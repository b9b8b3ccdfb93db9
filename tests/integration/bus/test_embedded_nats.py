"""The embedded nats-server launcher: ready when started, same port and store after a restart, clean stop."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

from xpunet.embedded.nats import EmbeddedNatsError, NatsServer, find_nats_server


def _server_info(port: int) -> dict[str, object]:
    """The INFO line a NATS server sends on connect (proves it accepts clients)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        line = sock.makefile("rb").readline()
    assert line.startswith(b"INFO ")
    info: dict[str, object] = json.loads(line[5:])
    return info


def _alive(server: NatsServer) -> bool:
    return server.running


def test_finds_the_wheel_binary() -> None:
    assert find_nats_server().name == "nats-server"


def test_bad_binary_override_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XPUNET_NATS_SERVER", "/nonexistent/nats-server")
    with pytest.raises(EmbeddedNatsError, match="/nonexistent/nats-server"):
        find_nats_server()


def test_session_server_accepts_clients_with_jetstream(nats_server: NatsServer) -> None:
    assert nats_server.running
    info = _server_info(nats_server.port)
    assert info["jetstream"] is True


def test_restart_keeps_port_and_store_then_stop_cleans_up() -> None:
    server = NatsServer()
    server.start()
    try:
        port, store = server.port, server.store_dir
        assert store.exists()
        server.restart()
        assert _alive(server)
        assert (server.port, server.store_dir) == (port, store)
        assert _server_info(port)["jetstream"] is True
        server.kill()
        assert not _alive(server)
        server.start()
        assert server.port == port
    finally:
        server.stop()
    assert not _alive(server)
    assert not store.exists()


def test_given_store_dir_is_kept(tmp_path: Path) -> None:
    store = tmp_path / "js"
    with NatsServer(store_dir=store) as server:
        assert server.store_dir == store
    assert (store / "jetstream").is_dir()


async def test_async_context_manager() -> None:
    async with NatsServer() as server:
        assert _server_info(server.port)["jetstream"] is True
    assert not _alive(server)
