"""Conformance: p4runtime-shell, an independent P4Runtime client, drives softipu.

p4runtime-shell pins protobuf < 3.21 and p4runtime 1.4.1, so it runs from its
own virtual environment (``.venv-p4shell``, built by the Makefile from
``p4shell-requirements.txt``) as a separate process: it connects, arbitrates,
pushes the pipeline (VERIFY_AND_COMMIT), inserts entries by name, reads them
back, modifies, deletes, and prints what it saw as JSON.
"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import pytest

from xpunet.datapath.softipu.server import SoftIpu
from xpunet.p4rt.testing import ACL_TABLE, LPM_TABLE, TEST_P4INFO_TEXT

ROOT = Path(__file__).resolve().parents[3]
P4SHELL_PYTHON = ROOT / ".venv-p4shell" / "bin" / "python"

SCRIPT = r"""
import json, sys
import p4runtime_sh.shell as sh

addr, p4info_path, bin_path = sys.argv[1:4]
sh.setup(device_id=1, grpc_addr=addr, election_id=(0, 1),
         config=sh.FwdPipeConfig(p4info_path, bin_path), verbose=False)
out = {}
try:
    te = sh.TableEntry("ingress.ipv4_lpm")(action="ingress.forward")
    te.match["hdr.ipv4.dst"] = "10.1.0.0/16"
    te.action["port"] = "5"
    te.action["dmac"] = "0a:00:00:00:00:07"
    te.insert()
    acl = sh.TableEntry("ingress.acl")(action="ingress.drop")
    acl.match["hdr.ipv4.src"] = "10.0.0.0&&&255.0.0.0"
    acl.match["meta.l4_dport"] = "80..443"
    acl.match["meta.vrf"] = "3"
    acl.priority = 7
    acl.insert()
    try:
        te.insert()
        out["duplicate_insert"] = "accepted"
    except Exception as exc:  # p4runtime-shell raises P4RuntimeWriteException
        out["duplicate_insert"] = str(exc)
    read = list(sh.TableEntry("ingress.ipv4_lpm").read())
    out["lpm_read"] = []
    for e in read:
        dst = e.match["hdr.ipv4.dst"].lpm
        out["lpm_read"].append([dst.value.hex(), dst.prefix_len, e.action["port"].value.hex()])
    out["acl_read"] = len(list(sh.TableEntry("ingress.acl").read()))
    te.action["port"] = "6"
    te.modify()
    out["after_modify"] = [e.action["port"].value.hex() for e in sh.TableEntry("ingress.ipv4_lpm").read()]
    te.delete()
    acl.delete()
    out["after_delete"] = len(list(sh.TableEntry("ingress.ipv4_lpm").read()))
    out["api_version"] = sh.client.api_version()
finally:
    sh.teardown()
print(json.dumps(out))
"""


# CI always builds the venv (make deps); only a hand-run checkout may lack it.
@pytest.mark.skipif(
    not P4SHELL_PYTHON.exists() and not os.environ.get("CI"), reason="no .venv-p4shell (built by make deps)"
)
async def test_p4runtime_shell_pushes_pipeline_inserts_reads_deletes(tmp_path: Path) -> None:
    # Lenient bytestrings, as the spec asks of a receiver: the shell pads action params to full width.
    server = SoftIpu(device_id=1)
    await server.start("127.0.0.1:0")
    try:
        p4info = tmp_path / "p4info.txt"
        p4info.write_text(TEST_P4INFO_TEXT)
        device_config = tmp_path / "device_config.bin"
        device_config.write_bytes(b"")
        script = tmp_path / "drive_softipu.py"
        script.write_text(SCRIPT)
        env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
        proc = await asyncio.create_subprocess_exec(
            str(P4SHELL_PYTHON),
            str(script),
            f"127.0.0.1:{server.port}",
            str(p4info),
            str(device_config),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=env,
        )
        async with asyncio.timeout(60):
            stdout, stderr = await proc.communicate()
        assert proc.returncode == 0, stderr.decode()[-3000:]
        seen = json.loads(stdout.decode().strip().splitlines()[-1])
    finally:
        await server.stop()
    assert "ALREADY_EXISTS" in seen["duplicate_insert"]
    # Read returns canonical bytestrings even though the shell wrote a padded param.
    assert seen["lpm_read"] == [["0a010000", 16, "05"]]
    assert seen["acl_read"] == 1
    assert seen["after_modify"] == ["06"]
    assert seen["after_delete"] == 0
    assert seen["api_version"]
    # softipu's own view agrees with what the shell read: empty again.
    assert server.state is not None
    assert len(server.state.tables[LPM_TABLE].entries) == 0
    assert len(server.state.tables[ACL_TABLE].entries) == 0
