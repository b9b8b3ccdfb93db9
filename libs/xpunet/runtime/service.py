"""The service contract: how a service plugs into the runtime.

A service provides one coroutine, ``run(ctx: ServiceContext[MySettings]) -> None``,
that works until ``ctx.stopping`` is set, then flushes and returns.  Its console
script is::

    def main() -> None:
        run_service("lb", run, LbSettings, sys.argv[1:])

``run_service`` does the rest: settings (defaults ← ``--config`` ← ``XPUNET_*``
environment ← flags), logging, OpenTelemetry, the NATS connection, the health
endpoint, SIGTERM/SIGINT handling, and the exit code (0 after a clean stop,
1 when the service failed, 2 for bad settings).  See docs/runtime.md.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from collections.abc import Sequence
from typing import Literal, NoReturn, TypeVar

from opentelemetry import metrics, trace

from xpunet.bus.api import Bus
from xpunet.runtime.context import RunFn, ServiceContext, idle_run
from xpunet.runtime.host import ServiceFailedError, ServiceHost
from xpunet.runtime.loader import load_settings
from xpunet.runtime.logs import configure_logging
from xpunet.runtime.settings import Settings, SettingsError
from xpunet.runtime.signals import stop_on_signals
from xpunet.runtime.telemetry import setup_telemetry

__all__ = ["Bus", "RunFn", "ServiceContext", "Settings", "idle_run", "run_service"]

log = logging.getLogger(__name__)

S = TypeVar("S", bound=Settings)

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_BAD_SETTINGS = 2


def run_service(
    name: str,
    run_fn: RunFn[S],
    settings_cls: type[S],
    argv: Sequence[str],
    *,
    description: str = "",
    loop: Literal["uvloop", "asyncio"] = "uvloop",
) -> NoReturn:
    """Run one service as this process until SIGTERM/SIGINT; never returns (exits with the code).

    ``loop="asyncio"``: the stock event loop, for services that use pyroute2's asyncio netlink
    sockets (uvloop cannot open AF_NETLINK datagram endpoints).
    """
    prog = f"xpunet-{name}"
    try:
        settings = load_settings(
            settings_cls, argv, prog=prog, description=description or f"xpunet {name} service"
        )
    except SettingsError as exc:
        print(f"{prog}: bad settings: {exc}", file=sys.stderr)
        raise SystemExit(EXIT_BAD_SETTINGS) from None
    configure_logging(settings.log.level)
    telemetry = setup_telemetry(prog, settings.telemetry, os.environ)
    # Libraries that ask the global API (e.g. trace propagation in the bus) see this service's providers.
    trace.set_tracer_provider(telemetry.tracer_provider)
    metrics.set_meter_provider(telemetry.meter_provider)
    host = ServiceHost(name, run_fn, settings, telemetry)
    try:
        code = asyncio.run(_serve(host)) if loop == "asyncio" else _run_loop(host)
    finally:
        telemetry.shutdown()
    logging.shutdown()
    raise SystemExit(code)


def _run_loop(host: ServiceHost[S]) -> int:
    import uvloop

    result: int = uvloop.run(_serve(host))
    return result


async def _serve(host: ServiceHost[S]) -> int:
    with stop_on_signals() as stop:
        try:
            await host.run(stop)
        except ServiceFailedError as exc:
            log.error("exiting with failure: %s", exc)
            return EXIT_FAILED
        except asyncio.CancelledError:
            return EXIT_FAILED
        except Exception:
            log.exception("runtime failure")
            return EXIT_FAILED
    return EXIT_OK
