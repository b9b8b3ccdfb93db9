"""The bus over NATS and JetStream KV: the only room that imports ``nats``.

``connect(servers, name=...)`` returns a ``NatsBus`` (``xpunet.bus.api.Bus``);
``await bus.kv(bucket)`` a ``NatsStateStore`` (``xpunet.bus.api.StateStore``).
"""

from xpunet.bus.nats._conn import NatsBus, NatsSubscription, connect
from xpunet.bus.nats._kv import NatsStateStore
from xpunet.bus.nats._watch import KVWatch

__all__ = ["KVWatch", "NatsBus", "NatsStateStore", "NatsSubscription", "connect"]
