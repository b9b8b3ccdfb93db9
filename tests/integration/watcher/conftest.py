"""Fixtures for the watcher's integration tests: the local Kubernetes API server and a real client of it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from kubernetes_asyncio import client

from xpunet.testing.kubeapi import FakeKubeAPI
from xpunet.watcher.kube import api_client


@pytest.fixture
async def fake_api() -> AsyncIterator[FakeKubeAPI]:
    async with FakeKubeAPI() as api:
        yield api


@pytest.fixture
async def kube(fake_api: FakeKubeAPI, tmp_path: Path) -> AsyncIterator[client.ApiClient]:
    """The real kubernetes_asyncio client, configured by a kubeconfig pointing at ``fake_api``."""
    api = await api_client(str(fake_api.write_kubeconfig(tmp_path / "kubeconfig")))
    try:
        yield api
    finally:
        await api.close()
