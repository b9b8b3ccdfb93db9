"""The run directory and its state file: what a local cluster created, written before it is created.

Each resource is recorded *before* the call that creates it (write-ahead), and
the file is replaced atomically, so after any crash — ``kill -9`` of
``xpunetctl up`` included — the file lists a superset of what exists and
``xpunetctl down`` can remove all of it.  Processes are recorded with their
start time (``/proc/<pid>/stat`` field 22) so a recycled pid is never killed;
every process a run starts also carries the run directory in its command
line, which finds the ones started between the fork and the record.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

STATE_VERSION = 1
STATE_FILE = "state.json"


class StateError(ValueError):
    """A state file that cannot be read (names the file and the problem)."""


def state_root() -> Path:
    """Where runs live: ``$XPUNETCTL_STATE_DIR``, ``/run/xpunet/clusters`` as root, else a per-user dir."""
    explicit = os.environ.get("XPUNETCTL_STATE_DIR")
    if explicit:
        return Path(explicit)
    if os.geteuid() == 0:
        return Path("/run/xpunet/clusters")
    base = os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir()
    return Path(base) / f"xpunet-clusters-{os.geteuid()}"


@dataclass(slots=True)
class ProcessRecord:
    pid: int
    starttime: int  # clock ticks since boot, /proc/<pid>/stat field 22 (0: unknown)
    what: str


@dataclass(slots=True)
class NftRecord:
    netns: str  # "" = the root namespace
    family: str
    table: str


@dataclass(slots=True)
class RunState:
    run: str
    created_at: float = 0.0
    netns: list[str] = field(default_factory=list)
    processes: list[ProcessRecord] = field(default_factory=list)
    nft_tables: list[NftRecord] = field(default_factory=list)
    root_links: list[str] = field(default_factory=list)  # links in the root namespace (none by design)
    info: dict[str, Any] = field(default_factory=dict)  # nats url, nodes, target, ... for `down`/status

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["version"] = STATE_VERSION
        return data

    @classmethod
    def from_json(cls, data: Any, *, where: str) -> RunState:
        if not isinstance(data, dict) or data.get("version") != STATE_VERSION:
            raise StateError(f"{where}: not a version {STATE_VERSION} cluster state")
        try:
            return cls(
                run=str(data["run"]),
                created_at=float(data.get("created_at", 0.0)),
                netns=[str(n) for n in data.get("netns", [])],
                processes=[ProcessRecord(**p) for p in data.get("processes", [])],
                nft_tables=[NftRecord(**t) for t in data.get("nft_tables", [])],
                root_links=[str(x) for x in data.get("root_links", [])],
                info=dict(data.get("info", {})),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise StateError(f"{where}: malformed cluster state: {exc}") from exc


def process_starttime(pid: int) -> int:
    """Field 22 of ``/proc/<pid>/stat``; 0 when the process does not exist."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0
    # The command name (field 2) may contain spaces and parentheses: split after the last ')'.
    fields = raw[raw.rfind(")") + 2 :].split()
    return int(fields[19]) if len(fields) > 19 else 0


class RunDir:
    """One run's directory: ``state.json``, manifests, sockets, logs and per-node files."""

    def __init__(self, path: Path, state: RunState) -> None:
        self.path = path
        self.state = state

    @classmethod
    def create(cls, run: str, *, root: Path | None = None) -> RunDir:
        path = (root or state_root()) / run
        path.mkdir(parents=True, exist_ok=False)
        rd = cls(path, RunState(run=run, created_at=time.time()))
        rd.save()
        return rd

    @classmethod
    def open(cls, path: Path) -> RunDir:
        file = path / STATE_FILE
        try:
            data = json.loads(file.read_text())
        except FileNotFoundError:
            raise
        except (OSError, ValueError) as exc:
            raise StateError(f"{file}: {exc}") from exc
        return cls(path, RunState.from_json(data, where=str(file)))

    @property
    def marker(self) -> str:
        """A string on the command line of every process this run starts (its directory)."""
        return str(self.path)

    def save(self) -> None:
        tmp = self.path / f".{STATE_FILE}.tmp"
        tmp.write_text(json.dumps(self.state.to_json(), indent=1, sort_keys=True))
        os.replace(tmp, self.path / STATE_FILE)

    def add_netns(self, name: str) -> None:
        if name not in self.state.netns:
            self.state.netns.append(name)
            self.save()

    def add_process(self, pid: int, what: str) -> None:
        self.state.processes.append(ProcessRecord(pid, process_starttime(pid), what))
        self.save()

    def add_nft(self, netns: str, family: str, table: str) -> None:
        record = NftRecord(netns, family, table)
        if record not in self.state.nft_tables:
            self.state.nft_tables.append(record)
            self.save()

    def set_info(self, **values: Any) -> None:
        self.state.info.update(values)
        self.save()

    def sub(self, *parts: str) -> Path:
        path = self.path.joinpath(*parts)
        path.mkdir(parents=True, exist_ok=True)
        return path


def runs(root: Path | None = None) -> Iterator[Path]:
    """Run directories under the state root (whether or not their state file is readable)."""
    base = root or state_root()
    with contextlib.suppress(FileNotFoundError):
        for child in sorted(base.iterdir()):
            if child.is_dir():
                yield child
