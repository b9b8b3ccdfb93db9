"""Shared fixtures for every integration test: a real nats-server and its helpers (see xpunet.testing),
and a garbage collection after each test so that a leaked socket fails the test that leaked it."""

from xpunet.testing.leaks import collect_garbage_after_test
from xpunet.testing.nats import bucket_name, bus, kv, nats_server, nats_url, private_nats_server

__all__ = [
    "bucket_name",
    "bus",
    "collect_garbage_after_test",
    "kv",
    "nats_server",
    "nats_url",
    "private_nats_server",
]
