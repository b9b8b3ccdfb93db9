"""Reads the layers of a service's settings: config files, the environment, the command line.

The interpretation is in ``xpunet.runtime.settings`` (pure); this module does the
reading and owns the command-line flags every service shares.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TypeVar

import yaml

from xpunet.runtime.settings import (
    Layer,
    Settings,
    SettingsError,
    build_settings,
    cli_layer,
    document_layer,
    env_layer,
    section_keys,
)

S = TypeVar("S", bound=Settings)


def read_config_file(path: Path) -> Layer:
    """Parse a YAML or JSON settings file (JSON by ``.json`` suffix; YAML otherwise)."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise SettingsError(f"cannot read config file {path}: {exc.strerror or exc}") from exc
    try:
        document = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise SettingsError(
            f"config file {path} is not valid {path.suffix.lstrip('.') or 'YAML'}: {exc}"
        ) from exc
    return document_layer(document, f"config file {path}")


def add_settings_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags every service (and ``xpunetctl up``) accepts."""
    group = parser.add_argument_group("settings (later wins: defaults < --config < XPUNET_* env < flags)")
    group.add_argument(
        "--config",
        action="append",
        default=[],
        type=Path,
        metavar="FILE",
        help="YAML or JSON file of sections and keys (repeatable; default: $XPUNET_CONFIG)",
    )
    group.add_argument(
        "--set",
        dest="assignments",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="set one key, e.g. --set health.port=0 (repeatable)",
    )
    group.add_argument("--nats", action="append", default=[], metavar="URL", help="= --set bus.urls=URL,...")
    group.add_argument("--log-level", metavar="LEVEL", help="= --set log.level=LEVEL")
    group.add_argument("--health-port", metavar="PORT", help="= --set health.port=PORT")
    group.add_argument("--node", metavar="NAME", help="= --set node.name=NAME")


def settings_from_args(cls: type[S], args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> S:
    """Build settings from parsed flags, the config files they name, and the environment."""
    env = os.environ if environ is None else environ
    configs: list[Path] = list(args.config)
    if not configs and env.get("XPUNET_CONFIG"):
        configs = [Path(env["XPUNET_CONFIG"])]
    layers = [read_config_file(path) for path in configs]
    layers.append(env_layer(env, cls))
    assignments: list[str] = []
    if args.nats:
        assignments.append("bus.urls=" + ",".join(args.nats))
    if args.log_level is not None:
        assignments.append(f"log.level={args.log_level}")
    if args.health_port is not None:
        assignments.append(f"health.port={args.health_port}")
    if args.node is not None:
        assignments.append(f"node.name={args.node}")
    assignments.extend(args.assignments)
    layers.append(cli_layer(assignments))
    return build_settings(cls, layers)


def describe_keys(cls: type[Settings]) -> str:
    """A help epilog listing every key with its default."""
    defaults = cls()
    lines = ["keys (section.key = default):"]
    for section, keys in section_keys(cls).items():
        for key in keys:
            value = getattr(getattr(defaults, section), key)
            lines.append(f"  {section}.{key} = {value!r}")
    return "\n".join(lines)


def load_settings(
    cls: type[S],
    argv: Sequence[str],
    *,
    prog: str,
    description: str,
    environ: Mapping[str, str] | None = None,
) -> S:
    """Parse ``argv`` for a service and build its settings (``SettingsError`` on bad input)."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description=description,
        epilog=describe_keys(cls),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_settings_arguments(parser)
    args = parser.parse_args(list(argv))
    return settings_from_args(cls, args, environ)
