"""Console script `xpunet-lb`: runs the lb service as one process (see docs/runtime.md)."""

from __future__ import annotations

import sys

from xpunet.runtime.plug import describe, load_service
from xpunet.runtime.service import run_service


def main() -> None:
    # run and Settings come from xpunet.lb.service; without it the service idles (and says so).
    entry = load_service("lb")
    run_service("lb", entry.run, entry.settings_cls, sys.argv[1:], description=describe(entry))


if __name__ == "__main__":
    main()
