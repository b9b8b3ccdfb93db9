"""The ``xpunet-softipu`` command: run a softipu P4Runtime server until SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
from pathlib import Path

from xpunet.datapath.softipu.server import SoftIpu, TlsFiles

log = logging.getLogger(__name__)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="xpunet-softipu", description="softipu P4Runtime server")
    parser.add_argument(
        "--listen", default="127.0.0.1:9559", help="address:port to serve on (default %(default)s)"
    )
    parser.add_argument("--device-id", type=int, default=1, help="P4Runtime device id (default %(default)s)")
    parser.add_argument("--tls-cert", type=Path, help="server certificate chain (PEM); enables TLS")
    parser.add_argument("--tls-key", type=Path, help="server private key (PEM)")
    parser.add_argument(
        "--tls-client-ca", type=Path, help="CA that signs client certificates; enables mutual TLS"
    )
    parser.add_argument(
        "--strict-bytestrings",
        action="store_true",
        help="reject non-canonical (zero-padded) bytestrings instead of canonicalising them",
    )
    parser.add_argument(
        "--gc-freeze-after",
        type=int,
        default=50_000,
        help="freeze the heap out of the cyclic GC after this many updates (0: never; default %(default)s)",
    )
    parser.add_argument("--port-file", type=Path, help="write the bound port here once listening")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    if (args.tls_cert is None) != (args.tls_key is None):
        parser.error("--tls-cert and --tls-key go together")
    if args.gc_freeze_after < 0:
        parser.error("--gc-freeze-after must be >= 0")
    if args.tls_client_ca is not None and args.tls_cert is None:
        parser.error("--tls-client-ca needs --tls-cert/--tls-key")
    return args


async def serve(args: argparse.Namespace) -> None:
    tls = None
    if args.tls_cert is not None:
        tls = TlsFiles(
            cert_chain=args.tls_cert.read_bytes(),
            private_key=args.tls_key.read_bytes(),
            client_ca=args.tls_client_ca.read_bytes() if args.tls_client_ca else None,
        )
    softipu = SoftIpu(
        device_id=args.device_id,
        strict_bytestrings=args.strict_bytestrings,
        gc_freeze_after=args.gc_freeze_after,
    )
    port = await softipu.start(args.listen, tls=tls)
    if args.port_file is not None:
        args.port_file.write_text(f"{port}\n")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("softipu stopping")
    await softipu.stop()


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    asyncio.run(serve(args))


if __name__ == "__main__":
    main()
