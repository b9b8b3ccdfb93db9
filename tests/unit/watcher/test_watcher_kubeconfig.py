"""Which Kubernetes config the watcher loads, the errors when there is none, and the rotating token file.

(Files only; the in-cluster client against a TLS API server with token rotation is
tests/integration/watcher/test_watcher_incluster.py.)
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from kubernetes_asyncio import client

from xpunet.watcher.kube import (
    ConfigChoice,
    KubeConfigError,
    TokenFile,
    api_client,
    choose_config,
    load_in_cluster,
)

POD_ENV = {"KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBERNETES_SERVICE_PORT": "443"}


def kubeconfig(path: Path, server: str = "https://example.test:6443") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        '{"apiVersion": "v1", "kind": "Config", "current-context": "c",'
        f' "clusters": [{{"name": "c", "cluster": {{"server": "{server}"}}}}],'
        ' "users": [{"name": "u", "user": {"token": "t"}}],'
        ' "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}]}'
    )
    return path


def service_account(directory: Path, *, token: str = "t1", ca: str = "PEM") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "token").write_text(token)
    (directory / "ca.crt").write_text(ca)
    return directory


def replace(path: Path, text: str) -> None:
    """Atomically, as the kubelet's atomic writer does."""
    staged = path.with_name(".staged")
    staged.write_text(text)
    os.replace(staged, path)


# --- selection ------------------------------------------------------------------------------------


def test_an_explicit_kubeconfig_wins_over_everything(tmp_path: Path) -> None:
    explicit = kubeconfig(tmp_path / "explicit")
    env = {**POD_ENV, "KUBECONFIG": str(kubeconfig(tmp_path / "env"))}
    kubeconfig(tmp_path / "home" / ".kube" / "config")
    choice = choose_config(str(explicit), env, tmp_path / "home")
    assert choice == ConfigChoice("kubeconfig", str(explicit), "watcher.source=kube:PATH")


def test_kubeconfig_env_wins_over_in_cluster(tmp_path: Path) -> None:
    listed = f"{tmp_path / 'absent'}{os.pathsep}{kubeconfig(tmp_path / 'env')}"
    choice = choose_config(None, {**POD_ENV, "KUBECONFIG": listed}, tmp_path)
    assert choice == ConfigChoice("kubeconfig", listed, "$KUBECONFIG")


def test_in_a_pod_it_is_in_cluster_even_with_a_default_kubeconfig(tmp_path: Path) -> None:
    kubeconfig(tmp_path / ".kube" / "config")
    choice = choose_config(None, POD_ENV, tmp_path)
    assert choice.mode == "in-cluster"
    assert choice.kubeconfig is None


def test_outside_a_pod_the_default_kubeconfig(tmp_path: Path) -> None:
    default = kubeconfig(tmp_path / ".kube" / "config")
    assert choose_config(None, {}, tmp_path) == ConfigChoice(
        "kubeconfig", str(default), "the default kubeconfig"
    )


def test_an_empty_service_host_is_not_a_pod(tmp_path: Path) -> None:
    default = kubeconfig(tmp_path / ".kube" / "config")
    assert choose_config(None, {"KUBERNETES_SERVICE_HOST": ""}, tmp_path).kubeconfig == str(default)


@pytest.mark.parametrize(
    ("kubeconfig_arg", "env", "message"),
    [
        pytest.param(
            "/nonexistent/kc", POD_ENV, r"kubeconfig /nonexistent/kc .* does not exist", id="explicit"
        ),
        pytest.param(None, {"KUBECONFIG": "/no/a:/no/b"}, r"\$KUBECONFIG=/no/a:/no/b: none", id="env-list"),
        pytest.param(
            None,
            {},
            r"KUBECONFIG is unset, \$KUBERNETES_SERVICE_HOST is unset .*/\.kube/config does not exist",
            id="nothing",
        ),
    ],
)
def test_no_usable_config_names_what_was_looked_for(
    tmp_path: Path, kubeconfig_arg: str | None, env: dict[str, str], message: str
) -> None:
    with pytest.raises(KubeConfigError, match=message):
        choose_config(kubeconfig_arg, env, tmp_path)


# --- in-cluster -----------------------------------------------------------------------------------


async def test_in_cluster_sets_host_ca_and_a_bearer_token_that_follows_the_file(tmp_path: Path) -> None:
    sa = service_account(tmp_path / "sa")
    cfg = client.Configuration()
    token = load_in_cluster(cfg, POD_ENV, sa)
    assert cfg.host == "https://10.96.0.1:443"
    assert cfg.ssl_ca_cert == str(sa / "ca.crt")
    assert await cfg.get_api_key_with_prefix("BearerToken") == "Bearer t1"
    replace(sa / "token", "t2\n")
    # The very next request carries the new token: no waiting out a refresh period.
    assert await cfg.get_api_key_with_prefix("BearerToken") == "Bearer t2"
    assert await cfg.get_api_key_with_prefix("BearerToken") == "Bearer t2"
    assert token.reads == 2  # unchanged file: not re-read per request


def test_in_cluster_brackets_an_ipv6_service_host(tmp_path: Path) -> None:
    cfg = client.Configuration()
    load_in_cluster(cfg, {**POD_ENV, "KUBERNETES_SERVICE_HOST": "fd00::1"}, service_account(tmp_path))
    assert cfg.host == "https://[fd00::1]:443"


@pytest.mark.parametrize(
    ("env", "files", "message"),
    [
        pytest.param(
            {}, ("token", "ca.crt"), "KUBERNETES_SERVICE_HOST, KUBERNETES_SERVICE_PORT unset", id="no-env"
        ),
        pytest.param(
            {"KUBERNETES_SERVICE_HOST": "10.96.0.1"},
            ("token", "ca.crt"),
            r"\(s\) KUBERNETES_SERVICE_PORT unset",
            id="no-port",
        ),
        pytest.param(
            POD_ENV, ("ca.crt",), r"sa/token missing \(is automountServiceAccountToken", id="no-token"
        ),
        pytest.param(POD_ENV, ("token",), r"sa/ca.crt missing", id="no-ca"),
        pytest.param(POD_ENV, (), r"sa/token and .*sa/ca.crt missing", id="nothing-mounted"),
    ],
)
def test_in_cluster_names_the_missing_variable_or_file(
    tmp_path: Path, env: dict[str, str], files: tuple[str, ...], message: str
) -> None:
    sa = tmp_path / "sa"
    sa.mkdir()
    for name in files:
        (sa / name).write_text("x")
    with pytest.raises(KubeConfigError, match=message):
        load_in_cluster(client.Configuration(), env, sa)


@pytest.mark.parametrize(
    ("token", "ca", "message"),
    [
        pytest.param("", "PEM", r"token file .*sa/token is empty", id="empty-token"),
        pytest.param("t1", "\n", r"CA file .*sa/ca.crt is empty", id="empty-ca"),
    ],
)
def test_in_cluster_rejects_empty_files(tmp_path: Path, token: str, ca: str, message: str) -> None:
    sa = service_account(tmp_path / "sa", token=token, ca=ca)
    with pytest.raises(KubeConfigError, match=message):
        load_in_cluster(client.Configuration(), POD_ENV, sa)


def test_a_token_file_gone_or_empty_for_a_moment_keeps_the_last_token(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = service_account(tmp_path) / "token"
    token = TokenFile(path)
    path.unlink()
    assert token.current() == "t1"
    path.write_text("")
    assert token.current() == "t1"
    replace(path, "t3")
    assert token.current() == "t3"
    assert "keeping the token read before" in caplog.text


def test_an_unchanged_token_file_is_reread_after_max_age(tmp_path: Path) -> None:
    token = TokenFile(service_account(tmp_path) / "token", max_age=0.0)
    token.current()
    token.current()
    assert token.reads == 3


# --- api_client -----------------------------------------------------------------------------------


async def test_api_client_loads_the_chosen_kubeconfig(tmp_path: Path) -> None:
    path = kubeconfig(tmp_path / "kc", server="https://kc.test:6443")
    api = await api_client(str(path), environ=POD_ENV)
    try:
        assert api.configuration.host == "https://kc.test:6443"
    finally:
        await api.close()


async def test_api_client_in_a_pod_reports_a_ca_file_that_is_no_certificate(tmp_path: Path) -> None:
    sa = service_account(tmp_path / "sa", ca="not a PEM certificate")
    with pytest.raises(KubeConfigError, match=r"CA certificate .*sa/ca.crt"):
        await api_client(None, environ=POD_ENV, service_account_dir=str(sa), home=tmp_path)


async def test_api_client_reports_a_broken_kubeconfig_naming_it(tmp_path: Path) -> None:
    broken = tmp_path / "kc"
    broken.write_text('{"apiVersion": "v1", "kind": "Config", "current-context": "missing"}')
    with pytest.raises(KubeConfigError, match=rf"kubeconfig {broken} \(watcher.source=kube:PATH\)"):
        await api_client(str(broken), environ={})
