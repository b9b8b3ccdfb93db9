"""Console script `xpunet-datapath`: runs the datapath service as one process (see docs/runtime.md)."""

from __future__ import annotations

import sys

from xpunet.runtime.plug import describe, load_service
from xpunet.runtime.service import run_service


def main() -> None:
    # run and Settings come from xpunet.datapath.service; without it the service idles (and says so).
    entry = load_service("datapath")
    # The stock loop: the kernel target and veth vNICs use pyroute2's asyncio netlink sockets,
    # which uvloop cannot open.  pyroute2's namespace helpers are forked and ended with SIGTERM:
    # with inherited handlers that signal would reach our loop (asyncio's wakeup fd) as a stop.
    import pyroute2.config

    pyroute2.config.disable_mp_signal = True
    run_service(
        "datapath", entry.run, entry.settings_cls, sys.argv[1:], description=describe(entry), loop="asyncio"
    )


if __name__ == "__main__":
    main()
