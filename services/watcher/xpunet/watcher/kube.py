"""Connecting to the Kubernetes API: in-cluster service account or a kubeconfig (kubernetes_asyncio)."""

from __future__ import annotations

import logging
import os

from kubernetes_asyncio import client, config

log = logging.getLogger(__name__)


async def api_client(kubeconfig: str | None) -> client.ApiClient:
    """An API client from ``kubeconfig`` (a path), or in-cluster config, or the default kubeconfig.

    ``None`` picks in-cluster when running in a pod (KUBERNETES_SERVICE_HOST is
    set), else ``$KUBECONFIG`` / ``~/.kube/config`` like kubectl.
    """
    cfg = client.Configuration()
    if kubeconfig is None and os.environ.get("KUBERNETES_SERVICE_HOST"):
        config.load_incluster_config(client_configuration=cfg)  # type: ignore[no-untyped-call]  # unannotated upstream
        log.info("kubernetes: in-cluster config, %s", cfg.host)
    else:
        await config.load_kube_config(config_file=kubeconfig, client_configuration=cfg)
        log.info("kubernetes: kubeconfig %s, %s", kubeconfig or "(default)", cfg.host)
    return client.ApiClient(configuration=cfg)
