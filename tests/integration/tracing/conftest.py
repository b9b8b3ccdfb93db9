"""Tracing test fixtures: a real OTLP/gRPC receiver (xpunet.testing.otlp) per test."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from xpunet.testing.otlp import OtlpReceiver


@pytest.fixture
async def otlp() -> AsyncIterator[OtlpReceiver]:
    receiver = OtlpReceiver()
    await receiver.start()
    yield receiver
    await receiver.stop()
