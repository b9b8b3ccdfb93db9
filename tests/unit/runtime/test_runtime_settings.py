"""Settings layers: defaults < file < environment < flags; unknown keys and bad values are named."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import pytest

from xpunet.runtime.settings import (
    Layer,
    Settings,
    SettingsError,
    build_settings,
    cli_layer,
    document_layer,
    env_layer,
)


@dataclass(frozen=True, slots=True)
class DemoOptions:
    mode: Literal["fast", "safe"] = "safe"
    peers: tuple[str, ...] = ()
    limit: int | None = None
    ratio: float = 0.5


@dataclass(frozen=True, slots=True)
class DemoSettings(Settings):
    lb: DemoOptions = field(default_factory=DemoOptions)


def test_defaults() -> None:
    s = build_settings(Settings, [])
    assert s.bus.urls == ("nats://127.0.0.1:4222",)
    assert s.log.level == "info"
    assert s.health.port == 8080


def test_layers_later_wins() -> None:
    file = document_layer({"log": {"level": "debug"}, "health": {"port": 9000}}, "config file f.yaml")
    env = env_layer({"XPUNET_HEALTH_PORT": "9100", "HOME": "/root"}, Settings)
    cli = cli_layer(["health.port=9200"])
    s = build_settings(Settings, [file, env, cli])
    assert s.log.level == "debug"  # only the file set it
    assert s.health.port == 9200
    assert build_settings(Settings, [file, env]).health.port == 9100


@pytest.mark.parametrize(
    ("layer", "attr", "expected"),
    [
        pytest.param(
            cli_layer(["bus.urls=nats://a:1, nats://b:2"]),
            "bus.urls",
            ("nats://a:1", "nats://b:2"),
            id="list-text",
        ),
        pytest.param(
            document_layer({"bus": {"urls": ["nats://a:1"]}}, "f"), "bus.urls", ("nats://a:1",), id="list-doc"
        ),
        pytest.param(
            document_layer({"bus": {"urls": "nats://a:1"}}, "f"),
            "bus.urls",
            ("nats://a:1",),
            id="lone-string-doc",
        ),
        pytest.param(cli_layer(["health.enabled=off"]), "health.enabled", False, id="bool-text"),
        pytest.param(cli_layer(["health.enabled=YES"]), "health.enabled", True, id="bool-text-upper"),
        pytest.param(
            document_layer({"health": {"enabled": False}}, "f"), "health.enabled", False, id="bool-doc"
        ),
        pytest.param(
            cli_layer(["runtime.shutdown_timeout=2.5"]), "runtime.shutdown_timeout", 2.5, id="float-text"
        ),
        pytest.param(
            document_layer({"runtime": {"shutdown_timeout": 3}}, "f"),
            "runtime.shutdown_timeout",
            3.0,
            id="int-as-float",
        ),
        pytest.param(cli_layer(["log.level=WARNING"]), "log.level", "warning", id="literal-text-case"),
        pytest.param(cli_layer(["lb.mode=fast"]), "lb.mode", "fast", id="service-section"),
        pytest.param(cli_layer(["lb.limit=7"]), "lb.limit", 7, id="optional-int"),
        pytest.param(cli_layer(["lb.limit=none"]), "lb.limit", None, id="optional-none-text"),
        pytest.param(document_layer({"lb": {"limit": None}}, "f"), "lb.limit", None, id="optional-none-doc"),
        pytest.param(
            env_layer({"XPUNET_LB_PEERS": "x,y"}, DemoSettings), "lb.peers", ("x", "y"), id="env-service"
        ),
        pytest.param(cli_layer(["node.name=a=b"]), "node.name", "a=b", id="value-with-equals"),
        pytest.param(document_layer(None, "f"), "log.level", "info", id="empty-file"),
        pytest.param(document_layer({"log": None}, "f"), "log.level", "info", id="empty-section"),
    ],
)
def test_values(layer: Layer, attr: str, expected: object) -> None:
    s = build_settings(DemoSettings, [layer])
    section, key = attr.split(".")
    assert getattr(getattr(s, section), key) == expected


@pytest.mark.parametrize(
    ("make_layer", "message"),
    [
        pytest.param(
            lambda: document_layer({"bus": {"url": ["x"]}}, "config file c.yaml"),
            "unknown key 'bus.url' in config file c.yaml; did you mean 'bus.urls'?",
            id="unknown-key-suggestion",
        ),
        pytest.param(
            lambda: document_layer({"helth": {"port": 1}}, "config file c.yaml"),
            "unknown section 'helth' in config file c.yaml; did you mean 'health'?",
            id="unknown-section-suggestion",
        ),
        pytest.param(
            lambda: document_layer({"health": {"zzz": 1}}, "f"),
            "unknown key 'health.zzz' in f; valid: health.enabled, health.host, health.port",
            id="unknown-key-no-close-match",
        ),
        pytest.param(
            lambda: env_layer({"XPUNET_HEALTH_PROT": "1"}, Settings),
            "unknown key 'health.prot' in environment variable XPUNET_HEALTH_PROT;"
            " did you mean 'health.port'?",
            id="env-unknown-key",
        ),
        pytest.param(
            lambda: cli_layer(["health.port=eighty"]),
            "health.port in --set health.port: expected integer, got 'eighty'",
            id="bad-int-text",
        ),
        pytest.param(
            lambda: document_layer({"health": {"port": "80"}}, "config file c.yaml"),
            "health.port in config file c.yaml: expected integer, got '80'",
            id="string-for-int-in-file",
        ),
        pytest.param(
            lambda: document_layer({"health": {"enabled": 1}}, "f"),
            "health.enabled in f: expected boolean, got 1",
            id="int-for-bool-in-file",
        ),
        pytest.param(
            lambda: document_layer({"log": {"level": "loud"}}, "f"),
            "log.level in f: expected one of 'debug', 'info', 'warning', 'error', got 'loud'",
            id="bad-literal",
        ),
        pytest.param(
            lambda: document_layer({"bus": {"urls": [1, 2]}}, "f"),
            "bus.urls in f: expected a list of strings, got [1, 2]",
            id="bad-list-item",
        ),
        pytest.param(
            lambda: document_layer({"health": {"port": True}}, "f"),
            "health.port in f: expected integer, got True",
            id="bool-is-not-int",
        ),
    ],
)
def test_errors_name_the_key(make_layer: object, message: str) -> None:
    assert callable(make_layer)
    with pytest.raises(SettingsError) as info:
        build_settings(DemoSettings, [make_layer()])
    assert str(info.value) == message


@pytest.mark.parametrize(
    ("document", "message"),
    [
        pytest.param([1, 2], "f: expected a mapping of sections, got list", id="not-a-mapping"),
        pytest.param(
            {"bus": 3}, "f: section 'bus': expected a mapping of keys, got int", id="section-not-mapping"
        ),
        pytest.param({1: {}}, "f: section names must be strings, got 1", id="non-string-section"),
    ],
)
def test_malformed_documents(document: object, message: str) -> None:
    with pytest.raises(SettingsError) as info:
        document_layer(document, "f")
    assert str(info.value) == message


@pytest.mark.parametrize("item", ["health.port", "port=1", ".port=1", "health.=1"])
def test_malformed_assignments(item: str) -> None:
    with pytest.raises(SettingsError, match=r"expected section\.key=value"):
        cli_layer([item])


def test_other_services_sections_are_ignored() -> None:
    """One shared file or environment may carry every service's section."""
    file = document_layer({"watcher": {"anything": 1}, "lb": {"mode": "fast"}}, "f")
    env = env_layer({"XPUNET_DATAPATH_TARGET": "kernel"}, DemoSettings)
    s = build_settings(DemoSettings, [file, env])
    assert s.lb.mode == "fast"
    # ... but a service's own section is checked strictly.
    with pytest.raises(SettingsError, match=r"unknown key 'lb\.mod'"):
        build_settings(DemoSettings, [document_layer({"lb": {"mod": "fast"}}, "f")])


def test_env_ignores_foreign_and_reserved_variables() -> None:
    layer = env_layer({"PATH": "/bin", "XPUNET_CONFIG": "/etc/x.yaml", "XPUNETX": "1"}, Settings)
    assert layer.values == {}


def test_env_unknown_section_is_named() -> None:
    with pytest.raises(SettingsError, match="unknown environment variable XPUNET_BOGUS_KEY"):
        env_layer({"XPUNET_BOGUS_KEY": "1"}, Settings)


@dataclass(frozen=True, slots=True)
class Checked:
    size: int = 1

    def __post_init__(self) -> None:
        if self.size <= 0:
            raise ValueError(f"lb.size must be positive, got {self.size}")


@dataclass(frozen=True, slots=True)
class CheckedSettings(Settings):
    lb: Checked = field(default_factory=Checked)


def test_section_post_init_errors_become_settings_errors() -> None:
    with pytest.raises(SettingsError, match=r"lb\.size must be positive, got 0"):
        build_settings(CheckedSettings, [cli_layer(["lb.size=0"])])
