"""The embedded source: a directory of YAML manifests instead of an API server.

Every ``*.yaml``/``*.yml``/``*.json`` file under the directory (recursively)
is read as a stream of documents (``---``); a ``kind: List`` document
contributes its items.  Objects of the six mirrored kinds go through the same
feed as the API's, so the KV contents are what the API would give; other kinds
(Deployments, ConfigMaps, ...) are ignored.

The directory is polled (file mtime, size and inode; no inotify dependency).
A changed file is re-read and diffed against what it gave before; a removed
file deletes its objects.  A file that cannot be read or parsed is reported
(logged once per change, kept in ``errors``) and its previous objects stay in
KV, like a malformed object from the API (see ``xpunet.watcher.state``); every
other file still loads.  Keys the bucket holds from an earlier run that no file
defines any more are deleted once every file reads.  One watcher per
directory: the embedded source does no leader election.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from xpunet.model import Kind
from xpunet.watcher.feed import Feed
from xpunet.watcher.state import API_KINDS, raw_key

log = logging.getLogger(__name__)

SUFFIXES = (".yaml", ".yml", ".json")


@dataclass(frozen=True, slots=True)
class _Stamp:
    mtime_ns: int
    size: int
    inode: int


@dataclass(frozen=True, slots=True)
class Loaded:
    """What one file gave: objects by key, and problems with single documents."""

    objects: dict[str, tuple[Kind, Mapping[str, Any]]]
    problems: list[str]


def load_manifest(path: Path) -> Loaded:
    """Read one file (blocking).  Raises ``OSError`` or ``yaml.YAMLError`` for a file that cannot be read."""
    objects: dict[str, tuple[Kind, Mapping[str, Any]]] = {}
    problems: list[str] = []
    with path.open("rb") as f:
        docs = list(yaml.safe_load_all(f))
    for i, doc in enumerate(docs):
        items: list[Any] = [doc]
        if isinstance(doc, Mapping) and doc.get("kind") == "List":
            items = doc.get("items") or []
            if not isinstance(items, list):
                problems.append(f"document {i}: List items is not a list")
                continue
        for j, item in enumerate(items):
            where = f"document {i}" + (f" item {j}" if len(items) > 1 or item is not doc else "")
            if item is None:
                continue
            if not isinstance(item, Mapping):
                problems.append(f"{where}: expected an object, got {type(item).__name__}")
                continue
            kind = API_KINDS.get(str(item.get("kind")))
            if kind is None:
                continue  # a kind we do not mirror
            key = raw_key(kind, item)
            if key is None:
                problems.append(f"{where}: {item.get('kind')} without a valid metadata.name")
                continue
            objects[key] = (kind, item)
    return Loaded(objects, problems)


class DirectorySource:
    def __init__(
        self,
        path: Path,
        *,
        poll_interval: float = 1.0,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.path = path
        self._poll_interval = poll_interval
        self._sleep = sleep
        self._stamps: dict[Path, _Stamp] = {}
        self._objects: dict[Path, dict[str, tuple[Kind, Mapping[str, Any]]]] = {}  # what each file last gave
        self._owner: dict[str, Path] = {}  # key → the file that last defined it
        self._unreadable: set[Path] = set()  # files whose objects are unknown (parse errors)
        self.errors: dict[Path, str] = {}  # files (or their documents) with problems, for status and tests
        self.scans = 0

    async def run(self, feed: Feed) -> None:
        # The first scan is a full list: what the bucket holds that no file defines (files
        # removed while no watcher ran) is deleted.  Not while a file is unreadable, though:
        # its objects are unknown, and deleting them would break fail-static; the sweep
        # waits for the first scan where every file reads.
        for kind in Kind:
            feed.begin_relist(kind)
        await self.scan(feed)
        for kind in Kind:
            feed.mark_synced(kind)
        log.info("manifests in %s loaded: %d objects", self.path, len(self._owner))
        swept = False
        while True:
            if not swept and not self._unreadable:
                for kind in Kind:
                    feed.end_relist(kind, resource_version="")
                swept = True
            await self._sleep(self._poll_interval)
            await self.scan(feed)

    async def scan(self, feed: Feed) -> None:
        """One poll: apply every added, changed and removed file to the feed."""
        self.scans += 1
        if self.scans == 1 and not self.path.is_dir():
            log.warning(
                "manifest directory %s does not exist (yet); mirroring nothing until it does", self.path
            )
        current = await asyncio.to_thread(_stamps, self.path)
        for path in sorted(set(self._stamps) - set(current)):
            log.info("manifest %s removed", path)
            self._replace(feed, path, {})
            self._stamps.pop(path)
            self._objects.pop(path, None)
            self.errors.pop(path, None)
            self._unreadable.discard(path)
        for path in sorted(current):
            if self._stamps.get(path) == current[path]:
                continue
            self._stamps[path] = current[path]
            try:
                loaded = await asyncio.to_thread(load_manifest, path)
            except (OSError, yaml.YAMLError, UnicodeDecodeError) as exc:
                # Keep what the file gave before: a half-saved edit must not delete objects.
                reason = " ".join(str(exc).split())
                log.warning("manifest %s is broken, keeping its previous objects: %s", path, reason)
                self.errors[path] = reason
                self._unreadable.add(path)
                feed.metrics.malformed_file()
                continue
            self._unreadable.discard(path)
            for problem in loaded.problems:
                log.warning("manifest %s: %s", path, problem)
            if loaded.problems:
                self.errors[path] = "; ".join(loaded.problems)
                feed.metrics.malformed_file(len(loaded.problems))
            else:
                self.errors.pop(path, None)
            self._replace(feed, path, loaded.objects)

    def _replace(self, feed: Feed, path: Path, objects: Mapping[str, tuple[Kind, Mapping[str, Any]]]) -> None:
        before = self._objects.get(path, {})
        self._objects[path] = dict(objects)
        gone: dict[Kind, list[str]] = {}
        for key, (kind, _) in before.items():
            if key not in objects and self._owner.get(key) == path:
                del self._owner[key]
                # Another file may define the same object too: it takes over rather than deleting it.
                other = next((p for p, objs in self._objects.items() if key in objs and p != path), None)
                if other is not None:
                    self._owner[key] = other
                    feed.upsert(*self._objects[other][key])
                else:
                    gone.setdefault(kind, []).append(key)
        for kind, keys in gone.items():
            feed.forget(kind, keys)
        for key, (kind, raw) in objects.items():
            other = self._owner.get(key)
            if other is not None and other != path:
                log.warning("%s %s is defined in %s and %s; using %s", kind, key, other, path, path)
            self._owner[key] = path
            feed.upsert(kind, raw)


def _stamps(root: Path) -> dict[Path, _Stamp]:
    out: dict[Path, _Stamp] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for name in filenames:
            if name.startswith(".") or not name.endswith(SUFFIXES):
                continue  # editors' swap and backup files
            path = Path(dirpath, name)
            try:
                st = path.stat()
            except OSError:
                continue  # removed between listing and stat
            out[path] = _Stamp(st.st_mtime_ns, st.st_size, st.st_ino)
    return out
