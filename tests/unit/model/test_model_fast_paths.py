"""The parsers' fast paths (common shapes first, caches of valid names) change nothing but speed.

``parse_pod`` tries pod IPs, container ports and conditions without building
error paths and falls back to the checked readers; label keys/values, port
names and namespace names already found valid are remembered; a canonical
dotted quad skips ``ipaddress``.  Each property compares against the checked
code alone, on valid and damaged pods alike.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator, Mapping
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from xpunet.model import ModelError, Pod, parse_pod
from xpunet.model import _read as r
from xpunet.model import parse as p
from xpunet.model.samples import sample

SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def checked_parse_pod(obj: Mapping[str, Any]) -> Pod:
    """``parse_pod`` as it reads with only the checked helpers (the reference)."""
    o, root, meta = p._start("Pod", obj, namespaced=True)
    spec = r.opt_map(o, root, "spec", "")
    status = r.opt_map(o, root, "status", "")
    return Pod(
        namespace=p._namespace(o, meta),
        name=p._name(o, meta),
        uid=p._uid(o, meta),
        node=r.opt_str(o, spec, "nodeName", "spec") or None,
        ips=p._pod_ips(o, status),
        labels=r.labels(o, meta, "labels", "metadata"),
        ports=p._container_ports(o, spec),
        phase=r.opt_str(o, status, "phase", "status") or "Pending",
        ready=p._condition_true_checked(o, status, "Ready"),
        host_network=bool(r.opt_bool(o, spec, "hostNetwork", "spec")),
    )


def outcome(parse: Any, obj: Any) -> tuple[str, object]:
    try:
        return ("ok", parse(obj))
    except ModelError as exc:
        return ("error", str(exc))


def forget_valid_names() -> None:
    for cache in (r._valid_label_keys, r._valid_dns_labels, r._valid_port_names):
        cache.clear()
    r._valid_label_values.clear()
    r._valid_label_values.add("")


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    if isinstance(node, dict):
        for key, value in node.items():
            yield (*prefix, key)
            yield from _paths(value, (*prefix, key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield (*prefix, i)
            yield from _paths(value, (*prefix, i))


SITES = [path for path in _paths(sample("pod")) if path[-1] != "kind"]
VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-2, 70_000)
    | st.text(max_size=6)
    | st.sampled_from(
        ["TCP", "UDP", "ICMP", "tcp", "True", "False", "Ready", "Always", "http", "", "a--b", "10.0.0.1",
         "010.0.0.1", "10.0.0.256", "fd00::1", "::ffff:10.0.0.1", "fe80::1%eth0", "1.2.3.4 ", "web", "x/y"]
    ),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=12), inner, max_size=3),
    max_leaves=8,
)  # fmt: skip


@SETTINGS
@given(site=st.sampled_from(SITES), value=VALUES, delete=st.booleans(), cold=st.booleans())
def test_parse_pod_matches_the_checked_reader_on_damaged_pods(
    site: tuple[Any, ...], value: Any, delete: bool, cold: bool
) -> None:
    obj = sample("pod")
    node: Any = obj
    for step in site[:-1]:
        node = node[step]
    if delete and isinstance(node, dict):
        del node[site[-1]]
    else:
        node[site[-1]] = value
    if cold:
        forget_valid_names()
    assert outcome(parse_pod, obj) == outcome(checked_parse_pod, obj)


@pytest.mark.parametrize("cold", [True, False], ids=["cold-caches", "warm-caches"])
def test_parse_pod_matches_the_checked_reader_on_the_sample(cold: bool) -> None:
    if cold:
        forget_valid_names()
    pod = parse_pod(sample("pod"))
    assert pod == checked_parse_pod(sample("pod"))
    assert [port.name for port in pod.ports] == ["http", None, "metrics", "proxy"]
    assert pod.ready


PORT: tuple[Any, ...] = ("spec", "containers", 0, "ports", 0)
EDGE_CASES: list[tuple[tuple[Any, ...], list[Any]]] = [
    ((*PORT, "containerPort"), [0, 1, 65535, 65536, -1, True, "80", 80.0, None]),
    ((*PORT, "protocol"), ["tcp", "SCTP", 6, "", None]),
    ((*PORT, "name"), ["", "a--b", "HTTP", "x" * 16, "123", 5, None]),
    (("spec", "containers", 0, "ports"), [(), [], None, {}, "x", [None]]),
    (("spec", "containers"), [(), [], None, {}, [[]]]),
    (("spec", "initContainers", 1, "restartPolicy"), ["Never", None, 1]),
    (("status", "podIPs"), [[], None, [{}], [{"ip": None}], ({"ip": "10.0.0.1"},)]),
    (("status", "podIPs"), [[{"ip": "::ffff:1.1.1.1"}], [{"ip": "10.0.0.1"}, {"ip": "10.0.0.1"}]]),
    (("status", "podIPs", 0, "ip"), ["10.0.0.01", "10.0.0.1", "fd00::1", "fd00::1%eth0", "", 7]),
    (("status", "conditions"), [[], None, ({"type": "Ready", "status": "True"},), [{"type": 1}], ["x"]]),
    (("status", "conditions", 1, "status"), ["False", "True", None, True, 1]),
]  # fmt: skip


@pytest.mark.parametrize("cold", [True, False], ids=["cold-caches", "warm-caches"])
@pytest.mark.parametrize(
    ("path", "value"),
    [
        pytest.param(path, value, id=f"{path[-1]}={value!r}")
        for path, values in EDGE_CASES
        for value in values
    ],
)
def test_parse_pod_matches_the_checked_reader_on_edge_cases(
    path: tuple[Any, ...], value: Any, cold: bool
) -> None:
    obj = sample("pod")
    node: Any = obj
    for step in path[:-1]:
        node = node[step]
    node[path[-1]] = value
    if cold:
        forget_valid_names()
    assert outcome(parse_pod, obj) == outcome(checked_parse_pod, obj)


OCTETS = st.one_of(st.integers(0, 300).map(str), st.sampled_from(["00", "01", "007", "", "1a", "²", "+1"]))


@settings(max_examples=500, deadline=None)
@given(st.lists(OCTETS, min_size=3, max_size=5).map(".".join))
def test_the_canonical_ipv4_shortcut_agrees_with_ipaddress(text: str) -> None:
    try:
        expected: tuple[str, str] = ("ok", str(ipaddress.IPv4Address(text)))
    except ValueError:
        expected = ("error", "")
    if r._CANONICAL_IPV4.fullmatch(text):
        assert expected == ("ok", text)
    got = outcome(lambda t: r.ip(r.Obj("Pod", "a/b"), t, "status.podIP"), text)
    assert got[0] == expected[0]
    if got[0] == "ok":
        assert got[1] == expected[1]


def test_invalid_names_are_never_remembered() -> None:
    forget_valid_names()
    o = r.Obj("Pod", "a/b")
    for bad in ("-x", "x_", "a b", "x" * 64):
        with pytest.raises(ModelError):
            r.labels(o, {"labels": {"ok": bad}}, "labels", "metadata")
    with pytest.raises(ModelError):
        r.check_port_name(o, "a--b", "ports[0].name")
    assert r._valid_label_values == {""}
    assert r._valid_label_keys == set()
    assert r._valid_port_names == set()


def test_the_caches_stay_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(r, "_VALID_CACHE_LIMIT", 10)
    forget_valid_names()
    o = r.Obj("Pod", "a/b")
    for i in range(25):
        assert r.labels(o, {"labels": {f"k{i}": f"v{i}"}}, "labels", "metadata") == {f"k{i}": f"v{i}"}
    assert len(r._valid_label_keys) <= 10
    assert "" in r._valid_label_values
    with pytest.raises(ModelError):
        r.labels(o, {"labels": {"": "v"}}, "labels", "metadata")
