"""Finds a service's logic: ``xpunet.<svc>.service`` with ``run`` (and optionally ``Settings``).

Lets the console scripts and ``xpunetctl up`` work before a service's logic
exists: without the module the service idles (connected, ready, waiting for
stop) and says so.  An import error *inside* an existing module is not hidden.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, cast

from xpunet.runtime.context import RunFn, idle_run
from xpunet.runtime.settings import Settings

SERVICES = ("watcher", "policy", "lb", "routing", "datapath")


@dataclass(frozen=True, slots=True)
class ServiceEntry:
    name: str
    run: RunFn[Any]
    settings_cls: type[Settings]
    idle: bool  # True when the service has no logic yet


def load_service(name: str) -> ServiceEntry:
    module_name = f"xpunet.{name}.service"
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name != module_name:
            raise
        return ServiceEntry(name=name, run=cast(RunFn[Any], idle_run), settings_cls=Settings, idle=True)
    settings_cls = getattr(module, "Settings", Settings)
    if not (isinstance(settings_cls, type) and issubclass(settings_cls, Settings)):
        raise TypeError(f"{module_name}.Settings must subclass xpunet.runtime.settings.Settings")
    return ServiceEntry(name=name, run=module.run, settings_cls=settings_cls, idle=False)


def describe(entry: ServiceEntry) -> str:
    if entry.idle:
        return (
            f"xpunet {entry.name} service. NOTE: its logic (xpunet.{entry.name}.service) does not exist yet; "
            "this process only connects to NATS, reports ready and waits for SIGTERM."
        )
    return f"xpunet {entry.name} service"
