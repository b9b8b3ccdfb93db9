"""vNIC stock defaults depend on the back-end: veth keeps none, VFs and sub-functions keep 8 (docs/cni.md).

Checked on both doors: the attach server's own ``AttachSettings`` (and its
``from_mapping``), and the datapath's ``attach:`` section as the real settings
parser builds it from a config file, the environment and ``--set`` flags.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from xpunet.datapath.attach.settings import POOL_DEFAULTS, AttachSettings, default_stock
from xpunet.datapath.attachment import AttachOptions
from xpunet.datapath.service import Settings
from xpunet.runtime.settings import SettingsError, build_settings, cli_layer, document_layer, env_layer


@pytest.mark.parametrize(
    ("backend", "given", "expected"),
    [
        pytest.param("veth", {}, (0, 0), id="veth-no-stock"),
        pytest.param("sriov-vf", {}, (8, 2), id="vf-stock"),
        pytest.param("subfunction", {}, (8, 2), id="sf-stock"),
        pytest.param("veth", {"pool_size": 4}, (4, 0), id="veth-explicit-stock"),
        pytest.param("veth", {"pool_size": 4, "low_water": 1}, (4, 1), id="veth-both"),
        pytest.param("sriov-vf", {"pool_size": 1}, (1, 1), id="vf-small-stock-caps-low-water"),
        pytest.param("sriov-vf", {"pool_size": 0}, (0, 0), id="vf-no-stock"),
        pytest.param("subfunction", {"low_water": 5}, (8, 5), id="sf-low-water-only"),
    ],
)
def test_stock_defaults_per_backend(backend: Any, given: dict[str, Any], expected: tuple[int, int]) -> None:
    settings = AttachSettings(backend=backend, **given)
    assert (settings.pool_size, settings.low_water) == expected
    options = AttachOptions(socket_path="/run/x.sock", backend=backend, **given)
    assert options.stock == expected
    server = options.server_settings(("10.244.1.0/24",))
    assert (server.pool_size, server.low_water) == expected


def test_every_backend_has_defaults() -> None:
    assert set(POOL_DEFAULTS) == {"veth", "sriov-vf", "subfunction"}


@pytest.mark.parametrize(
    ("backend", "pool_size", "low_water", "message"),
    [
        pytest.param("veth", None, 1, r"low_water 1 must be within 0\.\.attach\.pool_size 0", id="veth"),
        pytest.param("sriov-vf", 2, 3, r"low_water 3 must be within 0\.\.attach\.pool_size 2", id="above"),
        pytest.param("veth", -2, None, r"attach\.pool_size -2 must not be negative", id="negative"),
    ],
)
def test_bad_stock_is_named(backend: Any, pool_size: int | None, low_water: int | None, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        AttachOptions(backend=backend, pool_size=pool_size, low_water=low_water)
    with pytest.raises(ValueError, match=message.replace(r"attach\.", "")):
        default_stock(backend, pool_size, low_water, section="")


def test_from_mapping_takes_null_as_the_default_and_rejects_unknown_keys() -> None:
    vf = AttachSettings.from_mapping({"backend": "sriov-vf", "pool_size": None, "sriov_pf": "ens1f0"})
    assert (vf.pool_size, vf.low_water) == (8, 2)
    assert AttachSettings.from_mapping({}).pool_size == 0
    with pytest.raises(ValueError, match=r"unknown attach setting.*pool_sise"):
        AttachSettings.from_mapping({"pool_sise": 3})


def test_replace_keeps_the_resolved_stock() -> None:
    """dataclasses.replace passes every field on: a resolved stock is plain numbers, kept as such."""
    veth = AttachSettings()
    assert (replace(veth, pool_size=3).pool_size, replace(veth, pool_size=3).low_water) == (3, 0)


def test_the_settings_parser_resolves_the_defaults_from_every_layer() -> None:
    document = {"attach": {"socket_path": "/run/xpunet/infra.sock", "backend": "sriov-vf"}}
    layers = [document_layer(document, "xpunet.yaml")]
    assert build_settings(Settings, layers).attach.stock == (8, 2)
    veth = build_settings(Settings, [*layers, cli_layer(["attach.backend=veth"])]).attach
    assert (veth.pool_size, veth.stock) == (None, (0, 0))
    env = env_layer({"XPUNET_ATTACH_POOL_SIZE": "3"}, Settings)
    assert build_settings(Settings, [*layers, env]).attach.stock == (3, 2)
    # An empty value goes back to the back-end's default (None).
    unset = build_settings(Settings, [*layers, env_layer({"XPUNET_ATTACH_POOL_SIZE": ""}, Settings)])
    assert unset.attach.stock == (8, 2)
    with pytest.raises(SettingsError, match=r"attach\.pool_sise"):
        build_settings(Settings, [cli_layer(["attach.pool_sise=3"])])
    with pytest.raises(SettingsError, match=r"attach\.low_water"):
        build_settings(Settings, [cli_layer(["attach.low_water=1"])])  # veth: no stock to refill
