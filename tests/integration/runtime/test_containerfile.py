"""The Containerfile, checked without a container engine (there is none here, nor in CI).

What can go wrong without anyone noticing until an image build: a copied path that no
longer exists, a manifest command that is not a console script of the wheel, the
shim built other than the Makefile builds it (static), the shim not where the
initContainer copies it from, the kernel target's C library missing from the image.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

from xpunet.datapath.kernel import libnft

ROOT = Path(__file__).resolve().parents[3]
CONTAINERFILE = ROOT / "Containerfile"
KUBECTL = Path(sys.executable).parent / "kubectl"


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    lines: list[str] = []
    pending = ""
    for raw in CONTAINERFILE.read_text().splitlines():
        if raw.lstrip().startswith("#") or not raw.strip():
            continue
        if raw.rstrip().endswith("\\"):
            pending += raw.rstrip()[:-1] + " "
            continue
        lines.append(pending + raw)
        pending = ""
    assert not pending, "a continuation line ends the file"
    out = []
    for line in lines:
        word, _, rest = line.strip().partition(" ")
        out.append((word.upper(), rest.strip()))
    return out


def _stages() -> list[list[tuple[str, str]]]:
    stages: list[list[tuple[str, str]]] = []
    for word, rest in _instructions():
        if word == "FROM":
            stages.append([])
        if stages:
            stages[-1].append((word, rest))
    return stages


def _scripts() -> dict[str, str]:
    scripts: dict[str, str] = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    return scripts


def test_two_stages_on_the_same_python() -> None:
    build, runtime = _stages()
    assert build[0] == ("FROM", "${PYTHON_IMAGE} AS build")
    assert runtime[0] == ("FROM", "${PYTHON_IMAGE}")
    args = dict(rest.split("=", 1) for word, rest in _instructions() if word == "ARG")
    assert re.fullmatch(r".*python:3\.11-slim-bookworm", args["PYTHON_IMAGE"])  # pyproject: >= 3.11


def test_every_copied_source_exists() -> None:
    copies = [shlex.split(rest) for word, rest in _instructions() if word == "COPY"]
    assert copies
    for args in copies:
        if any(a.startswith("--from=") for a in args):
            continue
        *sources, _dest = args
        for source in sources:
            assert (ROOT / source).exists(), f"Containerfile copies {source}, which does not exist"
    # What the wheel build reads: the project file, its readme, every source root of the wheel.
    copied = {s for args in copies for s in args[:-1]}
    hatch = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["hatch"]["build"]["targets"]["wheel"]
    for root in hatch["sources"]:
        assert any(root == c or root.startswith(c.rstrip("/") + "/") for c in copied), root
    assert {"pyproject.toml", "README.md", "requirements.lock", "tools/gen_protos.py", "protos"} <= copied


def test_the_build_generates_code_before_the_wheel() -> None:
    build, _runtime = _stages()
    runs = " && ".join(rest for word, rest in build if word == "RUN")
    gen, wheel = runs.find("tools/gen_protos.py"), runs.find("pip wheel")
    assert 0 <= gen < wheel, "generated protobuf modules must exist when the wheel is built"
    assert (
        "libs/xpunet/_gen"
        in tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["hatch"]["build"]["targets"]["wheel"][
            "artifacts"
        ]
    )


def test_the_shim_is_built_by_the_makefile_statically_for_the_image() -> None:
    build, runtime = _stages()
    make = next(rest for word, rest in build if word == "RUN" and "cni-shim" in rest)
    command = shlex.split(make.split("&&")[-1])
    assert command[0] == "make"
    # The same make line, dry-run here: the compiler line it would run.
    dry = subprocess.run([*command, "-n"], cwd=ROOT, capture_output=True, text=True, check=True)
    (compile_line,) = [line for line in dry.stdout.splitlines() if "xpunet-cni.c" in line]
    assert " -static " in f" {compile_line} "
    assert "-DXPUNET_CNI_FALLBACK='\"/opt/xpunet/bin/xpunet-cni\"'" in compile_line  # the venv's plugin
    assert "-o /out/xpunet-cni-shim" in compile_line
    shim_copy = next(rest for word, rest in runtime if word == "COPY" and "xpunet-cni-shim" in rest)
    _from, source, dest = shlex.split(shim_copy)
    assert (_from, source) == ("--from=build", "/out/xpunet-cni-shim")
    # ... and it lands where the datapath's initContainer takes it from.
    rendered = subprocess.run(
        [str(KUBECTL), "kustomize", str(ROOT / "deploy" / "kustomize" / "base")],
        capture_output=True,
        text=True,
        check=True,
    )
    datapath = next(
        d
        for d in yaml.safe_load_all(rendered.stdout)
        if d and d["metadata"]["name"] == "xpunet-datapath" and d["kind"] == "DaemonSet"
    )
    (init,) = datapath["spec"]["template"]["spec"]["initContainers"]
    assert {e["name"]: e["value"] for e in init["env"]}["SHIM"] == dest


def test_manifest_commands_are_console_scripts_of_the_image() -> None:
    scripts = _scripts()
    _build, runtime = _stages()
    env = " ".join(rest for word, rest in runtime if word == "ENV")
    assert "PATH=/opt/xpunet/bin:" in env  # where the venv's console scripts are
    commands: set[str] = set()
    for manifest in (ROOT / "deploy" / "kustomize").rglob("*.yaml"):
        for doc in yaml.safe_load_all(manifest.read_text()):
            spec = (doc or {}).get("spec", {}).get("template", {}).get("spec", {})
            for container in [*spec.get("containers", []), *spec.get("initContainers", [])]:
                if container.get("image") == "xpunet":
                    commands.add(container["command"][0])
    assert {"xpunet-watcher", "xpunet-policy", "xpunet-lb", "xpunet-routing", "xpunet-datapath"} <= commands
    for command in commands - {"/bin/sh"}:
        assert command in scripts, f"the manifests run {command}, which pyproject does not declare"
    cmd = next(rest for word, rest in runtime if word == "CMD")
    assert yaml.safe_load(cmd)[0] in scripts


@pytest.mark.parametrize("library", [libnft.LIBRARY])
def test_the_runtime_stage_installs_the_kernel_targets_libraries(library: str) -> None:
    """The Debian package that provides each library the kernel target loads (asked of dpkg here)."""
    found = subprocess.run(["dpkg", "-S", library], capture_output=True, text=True, check=False)
    if found.returncode != 0:
        pytest.skip(f"{library} is not installed here (apt package nftables)")
    package = found.stdout.split(":", 1)[0]
    _build, runtime = _stages()
    installs = " ".join(rest for word, rest in runtime if word == "RUN")
    assert re.search(rf"apt-get install [^&]*\b{re.escape(package)}\b", installs), package
