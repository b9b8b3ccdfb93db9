"""Typed service settings and the pure logic that builds them from layers.

Settings are grouped frozen dataclasses: one section per concern (``bus``,
``telemetry``, ``health``, ``log``, ``node``, ``runtime``) plus, for a service
that needs them, its own section (``watcher``, ``datapath``, ...) added by
subclassing :class:`Settings`.

Values come in layers, later ones winning: the dataclass defaults, then a
config file, then the environment (``XPUNET_<SECTION>_<KEY>``), then command
line flags.  This module only *interprets* layers that the loader
(``xpunet.runtime.loader``) has read: no files, no ``os.environ``.  Every
problem raises :class:`SettingsError` naming the key, where it came from, and
either the closest valid key or the expected type.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

__all__ = [
    "SERVICE_SECTIONS",
    "BusSettings",
    "HealthSettings",
    "Layer",
    "LogSettings",
    "NodeSettings",
    "RuntimeSettings",
    "Settings",
    "SettingsError",
    "TelemetrySettings",
    "build_settings",
    "cli_layer",
    "document_layer",
    "env_layer",
    "section_keys",
]

ENV_PREFIX = "XPUNET_"
# Environment variables with the prefix that are not settings (read by the loader itself).
ENV_RESERVED = frozenset({"XPUNET_CONFIG"})
# Sections that belong to one service each.  A shared config file or environment
# may carry them for every service, so a service ignores the ones it does not
# have instead of rejecting them; any other unknown section is an error.
SERVICE_SECTIONS = frozenset({"watcher", "policy", "lb", "routing", "datapath", "attach"})

LogLevel = Literal["debug", "info", "warning", "error"]


class SettingsError(ValueError):
    """A setting is unknown or has a bad value.  The message names the key and its source."""


@dataclass(frozen=True, slots=True)
class BusSettings:
    """How to reach NATS."""

    urls: tuple[str, ...] = ("nats://127.0.0.1:4222",)
    name: str = ""  # the NATS client name; empty means "xpunet-<service>"
    connect_timeout: float = 2.0  # seconds per connection attempt
    reconnect_max: float = 5.0  # cap of the jittered exponential backoff between attempts (seconds)

    def __post_init__(self) -> None:
        if not self.urls:
            raise ValueError("bus.urls: at least one NATS URL is needed")
        if self.connect_timeout <= 0 or self.reconnect_max <= 0:
            raise ValueError("bus.connect_timeout and bus.reconnect_max must be positive")


@dataclass(frozen=True, slots=True)
class TelemetrySettings:
    """OpenTelemetry: export is on only when an OTLP endpoint is known."""

    otlp_endpoint: str = ""  # empty: use OTEL_EXPORTER_OTLP_ENDPOINT if set, else export nothing
    service_name: str = ""  # the resource's service.name; empty means "xpunet-<service>"
    metric_export_interval: float = 15.0  # seconds between OTLP metric exports


@dataclass(frozen=True, slots=True)
class HealthSettings:
    """The HTTP endpoint serving /healthz, /readyz and /metrics."""

    host: str = "127.0.0.1"
    port: int = 8080  # 0 picks a free port (printed in the log)
    enabled: bool = True


@dataclass(frozen=True, slots=True)
class LogSettings:
    level: LogLevel = "info"


@dataclass(frozen=True, slots=True)
class NodeSettings:
    """The Kubernetes node this process serves (per-node services such as datapath)."""

    name: str = ""  # empty: the host name


@dataclass(frozen=True, slots=True)
class RuntimeSettings:
    """The service runner's own knobs."""

    shutdown_timeout: float = 10.0  # seconds a service gets to flush after SIGTERM
    heartbeat_interval: float = 5.0  # seconds between health records written to the bus


@dataclass(frozen=True, slots=True)
class Settings:
    """Settings every service has.  A service adds its own section by subclassing:

    .. code-block:: python

        @dataclass(frozen=True, slots=True)
        class WatcherOptions:
            manifests: str = ""

        @dataclass(frozen=True, slots=True)
        class WatcherSettings(Settings):
            watcher: WatcherOptions = field(default_factory=WatcherOptions)
    """

    bus: BusSettings = field(default_factory=BusSettings)
    telemetry: TelemetrySettings = field(default_factory=TelemetrySettings)
    health: HealthSettings = field(default_factory=HealthSettings)
    log: LogSettings = field(default_factory=LogSettings)
    node: NodeSettings = field(default_factory=NodeSettings)
    runtime: RuntimeSettings = field(default_factory=RuntimeSettings)


S = TypeVar("S", bound=Settings)


@dataclass(frozen=True, slots=True)
class Layer:
    """One source of values: ``{section: {key: value}}``.

    ``textual`` layers (environment, command line) hold strings to be parsed;
    document layers (YAML/JSON files) hold typed values to be checked.
    ``origins`` names where each ``section.key`` came from, for error messages.
    """

    source: str
    values: Mapping[str, Mapping[str, object]]
    textual: bool
    origins: Mapping[str, str] = field(default_factory=dict)


# ---------------------------------------------------------------- schema


def _hints(cls: type[Any]) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _sections(cls: type[Settings]) -> dict[str, type[Any]]:
    hints = _hints(cls)
    out: dict[str, type[Any]] = {}
    for f in dataclasses.fields(cls):
        section_type = hints[f.name]
        if not (isinstance(section_type, type) and dataclasses.is_dataclass(section_type)):
            raise TypeError(f"{cls.__name__}.{f.name}: every settings field must be a section dataclass")
        out[f.name] = section_type
    return out


def section_keys(cls: type[Settings]) -> dict[str, dict[str, Any]]:
    """``{section: {key: type}}`` for a settings class (used by help texts and the loader)."""
    return {name: _hints(section) for name, section in _sections(cls).items()}


def _suggest(word: str, choices: Sequence[str], prefix: str = "") -> str:
    # Matched without the shared prefix, which would make every key of a section look close.
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    if close:
        return f"; did you mean {prefix + close[0]!r}?"
    return f"; valid: {', '.join(prefix + c for c in sorted(choices))}"


# ---------------------------------------------------------------- values


_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


def _describe(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin is tuple:
        return f"a list of {_describe(typing.get_args(tp)[0])}s"
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in typing.get_args(tp))
    if tp is type(None):
        return "null"
    names = {str: "string", int: "integer", float: "number", bool: "boolean"}
    return names.get(tp, getattr(tp, "__name__", str(tp)))


def _convert(value: object, tp: Any, *, textual: bool) -> object:
    """Return ``value`` as type ``tp`` or raise ``ValueError`` (message added by the caller)."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        choices = typing.get_args(tp)
        if value in choices:
            return value
        if textual and isinstance(value, str) and value.lower() in choices:
            return value.lower()
        raise ValueError
    if origin is tuple:
        (item_type, _ellipsis) = typing.get_args(tp)
        if textual and isinstance(value, str):
            items: list[object] = [part.strip() for part in value.split(",") if part.strip()]
        elif isinstance(value, list | tuple):
            items = list(value)
        elif not textual and isinstance(value, str):
            items = [value]  # a lone string in a file is a one-item list
        else:
            raise ValueError
        return tuple(_convert(item, item_type, textual=textual) for item in items)
    if origin in (typing.Union, types.UnionType):
        for option in typing.get_args(tp):
            try:
                return _convert(value, option, textual=textual)
            except ValueError:
                continue
        raise ValueError
    if tp is type(None):
        if value is None or (textual and isinstance(value, str) and value.lower() in ("", "null", "none")):
            return None
        raise ValueError
    if tp is bool:
        if isinstance(value, bool):
            return value
        if textual and isinstance(value, str) and value.lower() in _TRUE | _FALSE:
            return value.lower() in _TRUE
        raise ValueError
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if textual and isinstance(value, str):
            return int(value.strip(), 10)
        raise ValueError
    if tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if textual and isinstance(value, str):
            return float(value.strip())
        raise ValueError
    if tp is str:
        if isinstance(value, str):
            return value
        raise ValueError
    raise TypeError(f"unsupported settings type {tp!r}")


# ---------------------------------------------------------------- layers


def document_layer(document: object, source: str) -> Layer:
    """A layer from a parsed YAML/JSON document: a mapping of sections to mappings of keys."""
    if document is None:
        return Layer(source=source, values={}, textual=False)
    if not isinstance(document, Mapping):
        raise SettingsError(f"{source}: expected a mapping of sections, got {type(document).__name__}")
    values: dict[str, dict[str, object]] = {}
    for section, body in document.items():
        if not isinstance(section, str):
            raise SettingsError(f"{source}: section names must be strings, got {section!r}")
        if body is None:
            body = {}
        if not isinstance(body, Mapping):
            raise SettingsError(
                f"{source}: section {section!r}: expected a mapping of keys, got {type(body).__name__}"
            )
        keys: dict[str, object] = {}
        for key, value in body.items():
            if not isinstance(key, str):
                raise SettingsError(f"{source}: {section}: key names must be strings, got {key!r}")
            keys[key] = value
        values[section] = keys
    return Layer(source=source, values=values, textual=False)


def env_layer(environ: Mapping[str, str], cls: type[Settings]) -> Layer:
    """A layer from ``XPUNET_<SECTION>_<KEY>`` variables (section and key upper-cased)."""
    schema = section_keys(cls)
    # Longest section names first so a section whose name prefixes another's cannot steal it.
    known = sorted(set(schema) | SERVICE_SECTIONS, key=len, reverse=True)
    values: dict[str, dict[str, object]] = {}
    origins: dict[str, str] = {}
    for var in sorted(environ):
        if not var.startswith(ENV_PREFIX) or var in ENV_RESERVED:
            continue
        rest = var[len(ENV_PREFIX) :].lower()
        for section in known:
            if rest.startswith(section + "_"):
                key = rest[len(section) + 1 :]
                values.setdefault(section, {})[key] = environ[var]
                origins[f"{section}.{key}"] = f"environment variable {var}"
                break
        else:
            valid = [f"{ENV_PREFIX}{s.upper()}_{k.upper()}" for s, keys in schema.items() for k in keys]
            raise SettingsError(f"unknown environment variable {var}{_suggest(var, valid)}")
    return Layer(source="environment", values=values, textual=True, origins=origins)


def cli_layer(assignments: Sequence[str]) -> Layer:
    """A layer from ``section.key=value`` strings (``--set`` flags)."""
    values: dict[str, dict[str, object]] = {}
    origins: dict[str, str] = {}
    for item in assignments:
        name, sep, value = item.partition("=")
        section, dot, key = name.strip().partition(".")
        if not sep or not dot or not section or not key:
            raise SettingsError(f"--set {item!r}: expected section.key=value")
        values.setdefault(section, {})[key] = value
        origins[f"{section}.{key}"] = f"--set {name.strip()}"
    return Layer(source="command line", values=values, textual=True, origins=origins)


def build_settings(cls: type[S], layers: Sequence[Layer]) -> S:
    """Apply ``layers`` in order over the defaults of ``cls``; reject unknown keys and bad values."""
    schema = section_keys(cls)
    chosen: dict[str, dict[str, object]] = {section: {} for section in schema}
    for layer in layers:
        for section, body in layer.values.items():
            if section not in schema:
                if section in SERVICE_SECTIONS:
                    continue  # another service's section in a shared file or environment
                where = layer.origins.get(f"{section}.{next(iter(body), '')}", layer.source)
                raise SettingsError(
                    f"unknown section {section!r} in {where}{_suggest(section, list(schema))}"
                )
            for key, raw in body.items():
                full = f"{section}.{key}"
                where = layer.origins.get(full, layer.source)
                if key not in schema[section]:
                    hint = _suggest(key, list(schema[section]), prefix=f"{section}.")
                    raise SettingsError(f"unknown key {full!r} in {where}{hint}")
                tp = schema[section][key]
                try:
                    chosen[section][key] = _convert(raw, tp, textual=layer.textual)
                except ValueError:
                    raise SettingsError(f"{full} in {where}: expected {_describe(tp)}, got {raw!r}") from None
    sections = _sections(cls)
    try:
        built = {name: sections[name](**chosen[name]) for name in schema}
    except (TypeError, ValueError) as exc:  # a section's own __post_init__ validation
        raise SettingsError(str(exc)) from exc
    return cls(**built)
