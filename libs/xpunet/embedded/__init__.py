"""Embedded infrastructure for tests, ``xpunetctl up`` and ``make demo``: a real nats-server on loopback."""

from xpunet.embedded.nats import EmbeddedNatsError, NatsServer, find_nats_server

__all__ = ["EmbeddedNatsError", "NatsServer", "find_nats_server"]
