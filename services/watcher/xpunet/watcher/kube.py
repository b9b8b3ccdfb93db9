"""Connecting to the Kubernetes API: which config to use, and the in-cluster service account done right.

Which config (``choose_config``), first match wins — the order controller-runtime uses:

1. an explicit kubeconfig path (``watcher.source=kube:PATH``);
2. ``$KUBECONFIG`` (a ``:``-separated list, merged like kubectl does);
3. in-cluster, when ``KUBERNETES_SERVICE_HOST`` is set (every pod has it);
4. ``~/.kube/config``.

None of them: a ``KubeConfigError`` naming what was looked for.

In-cluster (``load_in_cluster``): the API server is
``https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT``, trusted through
the service account's ``ca.crt``, authenticated with its ``token``.  Bound
service-account tokens expire (an hour by default) and the kubelet rotates the
file before that, so a long-running watcher must re-read it.  kubernetes_asyncio's
own loader re-reads at most once a minute, so after a rotation every request of
that minute may fail with 401; ``TokenFile`` instead notices the new file (the
kubelet swaps it atomically, so it is a new inode) on the very next request, and
re-reads at least once a minute anyway.  A missing env variable or file is a
``KubeConfigError`` naming it.
"""

from __future__ import annotations

import logging
import os
import ssl
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal

from kubernetes_asyncio import client, config

log = logging.getLogger(__name__)

SERVICE_ACCOUNT_DIR: Final = "/var/run/secrets/kubernetes.io/serviceaccount"
HOST_ENV: Final = "KUBERNETES_SERVICE_HOST"
PORT_ENV: Final = "KUBERNETES_SERVICE_PORT"
TOKEN_MAX_AGE: Final = 60.0  # seconds; re-read the token at least this often, changed or not


class KubeConfigError(Exception):
    """No usable Kubernetes client config; the message names what is missing or wrong."""


@dataclass(frozen=True, slots=True)
class ConfigChoice:
    """The config ``api_client`` will load, and why that one."""

    mode: Literal["kubeconfig", "in-cluster"]
    kubeconfig: str | None  # the path (or $KUBECONFIG list) in kubeconfig mode
    reason: str


def choose_config(kubeconfig: str | None, environ: Mapping[str, str], home: Path) -> ConfigChoice:
    """Pick the config source (see the module docstring for the order)."""
    if kubeconfig:
        if not Path(kubeconfig).expanduser().is_file():
            raise KubeConfigError(f"kubeconfig {kubeconfig} (from watcher.source=kube:PATH) does not exist")
        return ConfigChoice("kubeconfig", kubeconfig, "watcher.source=kube:PATH")
    env_list = environ.get("KUBECONFIG", "")
    if env_list:
        paths = [p for p in env_list.split(os.pathsep) if p]
        if not any(Path(p).expanduser().is_file() for p in paths):
            raise KubeConfigError(f"$KUBECONFIG={env_list}: none of these files exists")
        return ConfigChoice("kubeconfig", env_list, "$KUBECONFIG")
    if environ.get(HOST_ENV):
        return ConfigChoice("in-cluster", None, f"${HOST_ENV} is set")
    default = home / ".kube" / "config"
    if default.is_file():
        return ConfigChoice("kubeconfig", str(default), "the default kubeconfig")
    raise KubeConfigError(
        f"no Kubernetes config: watcher.source names no kubeconfig, $KUBECONFIG is unset, "
        f"${HOST_ENV} is unset (not in a pod) and {default} does not exist; "
        "set watcher.source=kube:PATH, or dir:PATH to run without an API server"
    )


class TokenFile:
    """A bearer token read from a file that is replaced under us (a projected service-account token).

    ``current()`` stats the file on every call (one syscall per API request) and
    re-reads it when it is a different file or older than ``max_age``.  A file
    that is momentarily unreadable or empty keeps the token we have: the request
    goes out with it and, if that is stale, its 401 is retried by the caller.
    """

    def __init__(self, path: Path, *, max_age: float = TOKEN_MAX_AGE) -> None:
        self.path = path
        self._max_age = max_age
        self._identity: tuple[int, int, int, int] | None = None
        self._read_at = 0.0
        self.reads = 0  # how many times the file was (re)read, for tests and logs
        self._token = self._read()
        if not self._token:
            raise KubeConfigError(f"service-account token file {path} is empty")

    def current(self) -> str:
        try:
            st = self.path.stat()
        except OSError as exc:
            log.warning("service-account token %s: %s; keeping the token read before", self.path, exc)
            return self._token
        identity = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        if identity != self._identity or time.monotonic() - self._read_at >= self._max_age:
            try:
                token = self._read()
            except OSError as exc:
                log.warning("service-account token %s: %s; keeping the token read before", self.path, exc)
                return self._token
            if token and token != self._token:
                log.info("service-account token %s changed; using the new one", self.path)
            if token:
                self._token = token
            else:
                log.warning("service-account token %s is empty; keeping the token read before", self.path)
        return self._token

    def _read(self) -> str:
        st = self.path.stat()
        token = self.path.read_text().strip()
        self._identity = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        self._read_at = time.monotonic()
        self.reads += 1
        return token


def load_in_cluster(
    cfg: client.Configuration, environ: Mapping[str, str], service_account_dir: Path
) -> TokenFile:
    """Fill ``cfg`` from the pod's environment and service-account files; the token re-reads itself."""
    host, port = environ.get(HOST_ENV, ""), environ.get(PORT_ENV, "")
    missing = [name for name, value in ((HOST_ENV, host), (PORT_ENV, port)) if not value]
    if missing:
        raise KubeConfigError(
            f"in-cluster config: environment variable(s) {', '.join(missing)} unset or empty"
        )
    token_path, ca_path = service_account_dir / "token", service_account_dir / "ca.crt"
    absent = [str(p) for p in (token_path, ca_path) if not p.is_file()]
    if absent:
        raise KubeConfigError(
            f"in-cluster config: {' and '.join(absent)} missing (is automountServiceAccountToken "
            "false, or the service account's token not mounted?)"
        )
    if not ca_path.read_bytes().strip():
        raise KubeConfigError(f"in-cluster config: CA file {ca_path} is empty")
    token = TokenFile(token_path)
    # net.JoinHostPort: an IPv6 service host needs brackets in the URL.
    cfg.host = f"https://[{host}]:{port}" if ":" in host else f"https://{host}:{port}"
    cfg.ssl_ca_cert = str(ca_path)
    cfg.api_key["BearerToken"] = token.current()
    cfg.api_key_prefix["BearerToken"] = "Bearer"

    def refresh(conf: client.Configuration) -> None:
        # Called by the client before every request (Configuration.get_api_key_with_prefix).
        conf.api_key["BearerToken"] = token.current()

    cfg.refresh_api_key_hook = refresh
    return token


async def api_client(
    kubeconfig: str | None,
    *,
    environ: Mapping[str, str] | None = None,
    service_account_dir: str = SERVICE_ACCOUNT_DIR,
    home: Path | None = None,
) -> client.ApiClient:
    """An API client from the config ``choose_config`` picks; ``KubeConfigError`` if there is none."""
    env = os.environ if environ is None else environ
    choice = choose_config(kubeconfig, env, Path.home() if home is None else home)
    cfg = client.Configuration()
    if choice.mode == "in-cluster":
        load_in_cluster(cfg, env, Path(service_account_dir))
        log.info("kubernetes: in-cluster config (%s), %s", choice.reason, cfg.host)
    else:
        try:
            await config.load_kube_config(config_file=choice.kubeconfig, client_configuration=cfg)
        except config.ConfigException as exc:
            raise KubeConfigError(f"kubeconfig {choice.kubeconfig} ({choice.reason}): {exc}") from exc
        log.info("kubernetes: kubeconfig %s (%s), %s", choice.kubeconfig, choice.reason, cfg.host)
    try:
        # The client builds its TLS context here: a CA file that is no certificate fails now.
        return client.ApiClient(configuration=cfg)
    except ssl.SSLError as exc:
        raise KubeConfigError(f"CA certificate {cfg.ssl_ca_cert} ({choice.reason}): {exc}") from exc
