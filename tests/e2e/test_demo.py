"""``make demo`` in its not-root form (trace verdicts on softipu) runs anywhere; the root form is
covered by tests/integration/ctl (``xpunetctl demo`` end to end)."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from xpunet.cluster.testing import EXAMPLES
from xpunet.ctl.cluster_demo import cluster_demo
from xpunet.ctl.stack import StackOptions


async def test_demo_without_the_kernel_shows_trace_verdicts_and_the_edit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XPUNETCTL_STATE_DIR", str(tmp_path / "runs"))
    out = io.StringIO()
    code = await cluster_demo(StackOptions(), EXAMPLES, kernel=False, out=out)
    text = out.getvalue()
    assert code == 0, text
    assert "no network namespaces and no real packets" in text
    assert text.count("66 cells, 0 disagree with the policies") == 2, text
    assert "ops/debug → web-1: open/allow → timeout/deny" in text
    assert "RST/RST" in text  # the Service without endpoints refuses
    assert not any((tmp_path / "runs").iterdir())
