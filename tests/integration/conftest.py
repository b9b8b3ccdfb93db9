"""Shared fixtures for every integration test: a real nats-server and its helpers (see xpunet.testing)."""

from xpunet.testing.nats import bucket_name, bus, kv, nats_server, nats_url, private_nats_server

__all__ = ["bucket_name", "bus", "kv", "nats_server", "nats_url", "private_nats_server"]
