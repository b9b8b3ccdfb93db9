"""The watcher service: mirror Kubernetes objects (from the API or a manifest directory) into ``xpunet-k8s``.

Settings (section ``watcher``; ``--set watcher.<key>=``, ``XPUNET_WATCHER_<KEY>``):

* ``source`` — ``kube`` ($KUBECONFIG, else in-cluster when in a pod, else
  ``~/.kube/config``: ``xpunet.watcher.kube.choose_config``),
  ``kube:/path/to/kubeconfig``, or ``dir:/path/to/manifests`` (the embedded
  source: no API server, no leader election).
* ``service_account_dir`` — where the in-cluster token and ``ca.crt`` are read
  (the kubelet's mount point by default; the token is re-read when it rotates).
* ``leader_election`` and ``lease_*`` — the coordination.k8s.io/v1 Lease
  (API source only); ``lease_identity`` defaults to ``<host>-<pid>``.
* ``page_size``, ``watch_timeout`` — list pagination and server-side watch timeout.
* ``parse_workers`` — worker processes that decode list pages (initial list, relists).
* ``poll_interval`` — how often the manifest directory is rescanned.
* ``write_batch`` — the most changes per KV ``put_many``.
* ``freeze_gc_after_sync`` — move the in-sync mirror out of the cyclic GC's scans.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path

from xpunet.bus.api import BUCKET_K8S
from xpunet.runtime.context import ServiceContext
from xpunet.runtime.settings import Settings as BaseSettings
from xpunet.watcher.dirsource import DirectorySource
from xpunet.watcher.engine import ApiSource, Source, Watcher
from xpunet.watcher.informer import InformerOptions
from xpunet.watcher.kube import SERVICE_ACCOUNT_DIR, api_client
from xpunet.watcher.leader import LeaderElector, LeaseOptions
from xpunet.watcher.metrics import WatcherMetrics
from xpunet.wire import encode_object

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class WatcherOptions:
    source: str = "kube"  # kube | kube:KUBECONFIG | dir:PATH
    service_account_dir: str = SERVICE_ACCOUNT_DIR  # in-cluster token + ca.crt
    bucket: str = BUCKET_K8S
    leader_election: bool = True
    lease_namespace: str = "xpunet-system"
    lease_name: str = "xpunet-watcher"
    lease_identity: str = ""  # empty: <host>-<pid>
    lease_duration: int = 15
    renew_deadline: float = 10.0
    retry_period: float = 2.0
    page_size: int = 500
    parse_workers: int = 0  # worker processes decoding list pages (0: in-process)
    watch_timeout: float = 300.0
    poll_interval: float = 1.0
    write_batch: int = 5000
    freeze_gc_after_sync: bool = True  # gc.freeze() once in sync: no full-GC stalls over the mirror

    def __post_init__(self) -> None:
        kind, _, arg = self.source.partition(":")
        if kind not in ("kube", "dir") or (kind == "dir" and not arg):
            raise ValueError(f"watcher.source: {self.source!r} is not one of kube, kube:KUBECONFIG, dir:PATH")
        if (
            self.page_size < 1
            or self.write_batch < 1
            or self.poll_interval <= 0
            or self.watch_timeout < 1
            or self.parse_workers < 0
        ):
            raise ValueError(
                "watcher.page_size and watcher.write_batch must be >= 1, watcher.poll_interval > 0, "
                "watcher.watch_timeout >= 1, watcher.parse_workers >= 0"
            )
        if self.leader_election:
            self.lease_options("check")  # raises ValueError naming the timings

    def lease_options(self, identity: str) -> LeaseOptions:
        return LeaseOptions(
            identity=self.lease_identity or identity,
            namespace=self.lease_namespace,
            name=self.lease_name,
            lease_duration=self.lease_duration,
            renew_deadline=self.renew_deadline,
            retry_period=self.retry_period,
        )


@dataclass(frozen=True, slots=True)
class Settings(BaseSettings):
    watcher: WatcherOptions = field(default_factory=WatcherOptions)


async def run(ctx: ServiceContext[Settings]) -> None:
    opts = ctx.settings.watcher
    store = await ctx.bus.kv(opts.bucket)
    metrics = WatcherMetrics(ctx.meter)
    kind, _, arg = opts.source.partition(":")
    elector: LeaderElector | None = None
    api = None
    source: Source
    if kind == "dir":
        source = DirectorySource(Path(arg), poll_interval=opts.poll_interval)
    else:
        api = await api_client(arg or None, service_account_dir=opts.service_account_dir)
        source = ApiSource(
            api,
            InformerOptions(page_size=opts.page_size, watch_timeout=opts.watch_timeout),
            parse_workers=opts.parse_workers,
        )
        if opts.leader_election:
            elector = LeaderElector(api, opts.lease_options(f"{socket.gethostname()}-{os.getpid()}"))

    def on_standby() -> None:
        # A standby is doing its job: being ready to take over.
        ctx.mark_ready()

    watcher = Watcher(
        store=store,
        source=source,
        encode=encode_object,
        tracer=ctx.tracer,
        metrics=metrics,
        elector=elector,
        write_batch=opts.write_batch,
        on_synced=ctx.mark_ready,
        on_standby=on_standby,
        freeze_gc_after_sync=opts.freeze_gc_after_sync,
    )
    task = asyncio.create_task(watcher.run(), name="watcher")
    stop = asyncio.create_task(ctx.stopping.wait(), name="stopping")
    try:
        await asyncio.wait({task, stop}, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            task.result()  # raises what ended the watcher
            raise RuntimeError("watcher loop returned unexpectedly")
        # Let the writer finish what is queued, within half the shutdown budget; then stop.
        if watcher.writer is not None and watcher.feed is not None and watcher.feed.state.pending:
            log.info("stopping: flushing %d queued changes", watcher.feed.state.pending)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(ctx.settings.runtime.shutdown_timeout / 2):
                    await watcher.writer.drained()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        if elector is not None:
            await elector.release()
    finally:
        stop.cancel()
        task.cancel()
        if api is not None:
            await api.close()
