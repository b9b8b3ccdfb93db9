"""The built wheel, not just the editable install, carries the whole namespace and runs.

The wheel merges libs/ and every services/<name>/ root into one ``xpunet``
package; this builds it, unpacks it into a fresh directory and imports every
module and console-script target from there, with the source roots kept off
``sys.path``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]

CHECK = """
import importlib, pkgutil, sys
wheel_dir = sys.argv[1]
import xpunet
names = sorted(m.name for m in pkgutil.walk_packages(xpunet.__path__, "xpunet."))
for name in names:
    mod = importlib.import_module(name)
    assert mod.__file__ and mod.__file__.startswith(wheel_dir), (name, mod.__file__)
for target in sys.argv[2:]:
    module, _, func = target.partition(":")
    assert callable(getattr(importlib.import_module(module), func)), target
print(len(names))
"""


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(out), str(ROOT)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (built,) = out.glob("xpunet-*.whl")
    return built


@pytest.mark.timeout(300)
def test_wheel_contains_every_source_root(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    for package in ("model", "bus", "runtime", "watcher", "policy", "lb", "routing", "datapath"):
        assert any(n.startswith(f"xpunet/{package}/") for n in names), package
    # A namespace package: no top-level __init__.py, no generic top-level names.
    assert "xpunet/__init__.py" not in names
    tops = {n.split("/", 1)[0] for n in names}
    assert tops <= {"xpunet", f"{wheel.name.split('-')[0]}-{wheel.name.split('-')[1]}.dist-info"}


@pytest.mark.timeout(300)
def test_wheel_imports_and_entry_points_resolve(wheel: Path, tmp_path: Path) -> None:
    unpacked = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(unpacked)
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    env = {**os.environ, "PYTHONPATH": str(unpacked), "PYTHONSAFEPATH": "1"}
    # Drop the editable install's source roots so every import must come from the wheel.
    roots = (str(ROOT / "libs"), str(ROOT / "services"))
    code = f"import sys; sys.path[:] = [p for p in sys.path if not p.startswith({roots!r})]\n" + CHECK
    result = subprocess.run(
        [sys.executable, "-c", code, str(unpacked), *scripts.values()],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert int(result.stdout.strip()) > 50
