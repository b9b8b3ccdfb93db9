"""Console script `xpunet-cni`: the CNI binary in Python, kept to the standard library.

With a resident agent listening (`agentSocket` in the network config, default
/run/xpunet/cni-agent.sock; "" turns it off), the binary forwards its CNI_*
environment and stdin there (framing in wire.py) and prints the answer: the
agent runs the verbs with grpc and pyroute2 already loaded, which saves the
~0.3 s their imports cost every exec.  Without an agent, or if it fails, the
verbs run here (`verbs.run`); every verb is idempotent, so running one again
after a failed forward is safe.

The C shim (cni-shim/xpunet-cni.c) does the same forwarding without starting
an interpreter and execs this script for everything else.

`xpunet-cni agent [--socket PATH] [--netns NAME]` runs a standalone agent.
"""

from __future__ import annotations

import json
import os
import socket
import sys

from xpunet.datapath.cni.wire import MAX_MESSAGE, WireError, decode_reply, encode_request

DEFAULT_AGENT_SOCKET = "/run/xpunet/cni-agent.sock"
MAX_REPLY = MAX_MESSAGE


def main() -> None:
    if sys.argv[1:2] == ["agent"]:
        from xpunet.datapath.cni.agent import agent_main

        agent_main(sys.argv[2:])
        return
    stdin = sys.stdin.buffer.read()
    env = dict(os.environ)
    forwarded = forward(env, stdin) if env.get("CNI_COMMAND") != "VERSION" else None
    if forwarded is not None:
        code, out = forwarded
        sys.stdout.buffer.write(out)
        sys.stdout.flush()
        sys.exit(code)
    import logging

    from xpunet.datapath.cni.verbs import run

    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="xpunet-cni: %(message)s")
    code, output = run(env, stdin)
    if output:
        sys.stdout.write(output + "\n")
        sys.stdout.flush()
    sys.exit(code)


def agent_socket(stdin: bytes) -> tuple[str, float]:
    """(agent socket path or "", timeout) from the network config; "" when it cannot be read."""
    try:
        conf = json.loads(stdin)
    except ValueError:
        return "", 0.0
    if not isinstance(conf, dict):
        return "", 0.0
    path = conf.get("agentSocket", DEFAULT_AGENT_SOCKET)
    timeout = conf.get("timeoutSeconds", 10)
    if not isinstance(path, str) or not isinstance(timeout, int | float) or isinstance(timeout, bool):
        return "", 0.0
    return path, float(timeout) + 5.0


def forward(env: dict[str, str], stdin: bytes) -> tuple[int, bytes] | None:
    """(exit code, stdout) from the agent; None when there is none (or it failed): run the verb here."""
    path, timeout = agent_socket(stdin)
    if not path or not os.path.exists(path):
        return None
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.settimeout(timeout)
            conn.connect(path)
            conn.sendall(encode_request(env, stdin))
            conn.shutdown(socket.SHUT_WR)
            chunks: list[bytes] = []
            size = 0
            while chunk := conn.recv(65536):
                chunks.append(chunk)
                size += len(chunk)
                if size > MAX_REPLY + 64:
                    raise WireError("reply too long")
        return decode_reply(b"".join(chunks))
    except (OSError, WireError) as exc:
        sys.stderr.write(f"xpunet-cni: agent at {path} failed ({exc}); running the verb here\n")
        return None


if __name__ == "__main__":
    main()
