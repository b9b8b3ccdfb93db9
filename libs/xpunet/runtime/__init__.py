"""The service runtime: settings, logging, telemetry, health endpoint and the runner.

A service plugs in with one coroutine, ``run(ctx: ServiceContext) -> None``; see
``xpunet.runtime.service`` and docs/runtime.md.
"""
