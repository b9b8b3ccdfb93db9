"""Reading the declared cluster (``examples/``) and writing the watcher's manifest directory.

The declared files are read with the watcher's own loader
(``xpunet.watcher.dirsource.load_manifest``) and parsed with the model's
parsers, so a manifest the demo accepts is exactly one the watcher accepts.
The run's manifest directory holds one file per object (``<kind>/<ns>.<name>.yaml``),
each replaced atomically, so an edit is one file the watcher's poll picks up.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from xpunet.cluster.plan import PlanError, PodSpec, pod_spec
from xpunet.model import parse
from xpunet.model.objects import K8sObject, Namespace, NetworkPolicy, Pod, Service


@dataclass(slots=True)
class Declared:
    """What a manifest directory declares, split the way the cluster uses it."""

    pods: list[PodSpec] = field(default_factory=list)
    objects: list[Mapping[str, Any]] = field(default_factory=list)  # everything but Pods, as written
    problems: list[str] = field(default_factory=list)

    def parsed(self) -> list[K8sObject]:
        return [parse.parse_object(o) for o in self.objects]

    @property
    def services(self) -> list[Service]:
        return [o for o in self.parsed() if isinstance(o, Service)]

    @property
    def namespaces(self) -> list[Namespace]:
        return [o for o in self.parsed() if isinstance(o, Namespace)]

    @property
    def policies(self) -> list[NetworkPolicy]:
        return [o for o in self.parsed() if isinstance(o, NetworkPolicy)]


def load_declared(directory: Path) -> Declared:
    """Every manifest under ``directory``; a bad object is a ``PlanError`` naming file and object."""
    from xpunet.watcher.dirsource import SUFFIXES, load_manifest

    if not directory.is_dir():
        raise PlanError(f"manifest directory {directory} does not exist")
    out = Declared()
    for path in sorted(p for p in directory.rglob("*") if p.suffix in SUFFIXES and p.is_file()):
        loaded = load_manifest(path)
        out.problems += [f"{path}: {p}" for p in loaded.problems]
        for key, (_kind, raw) in sorted(loaded.objects.items()):
            try:
                obj = parse.parse_object(raw)
            except ValueError as exc:
                raise PlanError(f"{path}: {key}: {exc}") from exc
            if isinstance(obj, Pod):
                out.pods.append(pod_spec(raw, obj))
            else:
                out.objects.append(raw)
    if out.problems:
        raise PlanError("; ".join(out.problems))
    return out


def object_file(root: Path, manifest: Mapping[str, Any]) -> Path:
    meta = manifest.get("metadata") or {}
    kind = str(manifest.get("kind", "unknown")).lower()
    ns = meta.get("namespace")
    name = str(meta.get("name", "unnamed"))
    return root / kind / (f"{ns}.{name}.yaml" if ns else f"{name}.yaml")


def write_object(root: Path, manifest: Mapping[str, Any]) -> Path:
    """Write (or replace) one object's file atomically; the watcher sees a new inode."""
    path = object_file(root, manifest)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(yaml.safe_dump(dict(manifest), sort_keys=False))
    os.replace(tmp, path)
    return path


def remove_object(root: Path, manifest: Mapping[str, Any]) -> bool:
    path = object_file(root, manifest)
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    return True


def remove_kind(root: Path, kind: str) -> None:
    directory = root / kind.lower()
    if directory.is_dir():
        for path in directory.iterdir():
            path.unlink()
