"""IPAM: ranges from podCIDRs, gateways, idempotent leases, exhaustion, release, GC, persisted state."""

from __future__ import annotations

import ipaddress
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from xpunet.ipam import (
    AttachmentKey,
    Ipam,
    IpamConfigError,
    IpamExhaustedError,
    IpamStateError,
    family_range,
    node_ranges,
)

DUAL = ("10.244.1.0/24", "fd00:10:244:1::/64")


def key(n: int, ifname: str = "eth0") -> AttachmentKey:
    return AttachmentKey(f"c{n:04d}", ifname)


@pytest.mark.parametrize(
    ("cidr", "gateway", "first", "last", "size"),
    [
        pytest.param("10.244.1.0/24", "10.244.1.1", "10.244.1.2", "10.244.1.254", 253, id="v4-24"),
        pytest.param("10.0.0.0/30", "10.0.0.1", "10.0.0.2", "10.0.0.2", 1, id="v4-30-one-pod"),
        pytest.param("fd00::/120", "fd00::1", "fd00::2", "fd00::ff", 254, id="v6-120"),
        pytest.param("fd00::/126", "fd00::1", "fd00::2", "fd00::3", 2, id="v6-126"),
    ],
)
def test_family_range_gateway_is_first_usable(
    cidr: str, gateway: str, first: str, last: str, size: int
) -> None:
    rng = family_range(cidr)
    assert rng.gateway == ipaddress.ip_address(gateway)
    assert rng.address(rng.first) == ipaddress.ip_address(first)
    assert rng.address(rng.last) == ipaddress.ip_address(last)
    assert rng.size == size
    assert rng.gateway not in rng  # the gateway is never leased


@pytest.mark.parametrize(
    ("cidrs", "message"),
    [
        pytest.param(["10.0.0.0/33"], "not a valid network", id="bad-prefix"),
        pytest.param(["10.0.0.1/24"], "not a valid network", id="host-bits"),
        pytest.param(["banana"], "'banana'", id="garbage"),
        pytest.param(["10.0.0.0/31"], "too small", id="v4-31"),
        pytest.param(["fd00::/127"], "too small", id="v6-127"),
        pytest.param(["10.0.0.0/24", "10.1.0.0/24"], "two IPv4", id="two-v4"),
        pytest.param([], "no pod CIDR", id="none"),
    ],
)
def test_bad_ranges_are_named(cidrs: list[str], message: str) -> None:
    with pytest.raises(IpamConfigError, match=message):
        node_ranges(cidrs)


def test_node_ranges_orders_v4_first() -> None:
    ranges = node_ranges(reversed(DUAL))
    assert [r.family for r in ranges] == [4, 6]


def test_dual_stack_lease_is_idempotent_and_released() -> None:
    ipam = Ipam(node_ranges(DUAL))
    first = ipam.allocate(key(1))
    assert [str(a) for a in first.addresses] == ["10.244.1.2", "fd00:10:244:1::2"]
    assert ipam.allocate(key(1)) is first
    second = ipam.allocate(key(1, "net1"))
    assert second.addresses != first.addresses
    assert ipam.release(key(1)) == first
    assert ipam.release(key(1)) is None
    assert ipam.lease(key(1)) is None
    assert ipam.free(4) == 253 - 1


def test_released_address_is_not_reused_at_once() -> None:
    ipam = Ipam(node_ranges(["10.0.0.0/29"]))  # 5 pod addresses
    a = ipam.allocate(key(1))
    ipam.release(key(1))
    b = ipam.allocate(key(2))
    assert a.addresses != b.addresses


def test_exhaustion_is_clear_and_all_or_nothing() -> None:
    ipam = Ipam(node_ranges(["10.0.0.0/29", "fd00::/126"]))  # v4: 5 addresses, v6: 2
    ipam.allocate(key(1))
    ipam.allocate(key(2))
    with pytest.raises(IpamExhaustedError, match=r"IPv6 range fd00::/126 is exhausted"):
        ipam.allocate(key(3))
    # The IPv4 address the failed allocation took is back.
    assert ipam.free(4) == 3
    assert ipam.lease(key(3)) is None
    ipam.release(key(1))
    assert ipam.allocate(key(3)).address(6) is not None


def test_gc_releases_only_unknown_attachments() -> None:
    ipam = Ipam(node_ranges(DUAL))
    for n in range(5):
        ipam.allocate(key(n))
    released = ipam.gc([key(1), key(3), key(99)])
    assert [lease.key for lease in released] == [key(0), key(2), key(4)]
    assert [lease.key for lease in ipam.leases()] == [key(1), key(3)]


def test_state_round_trips_through_json() -> None:
    ranges = node_ranges(DUAL)
    ipam = Ipam(ranges)
    for n in range(4):
        ipam.allocate(key(n))
    ipam.release(key(2))
    data = json.loads(json.dumps(ipam.to_data()))
    again = Ipam.from_data(ranges, data)
    assert again.leases() == ipam.leases()
    # The cursor survives too: the next address is the same in both.
    assert again.allocate(key(9)) == ipam.allocate(key(9))


def test_state_with_leases_outside_new_range_drops_them() -> None:
    old = Ipam(node_ranges(DUAL))
    old.allocate(key(1))
    new_ranges = node_ranges(["10.9.0.0/24", "fd00:10:244:1::/64"])
    again = Ipam.from_data(new_ranges, old.to_data())
    assert again.leases() == ()
    assert [lease.key for lease in again.dropped] == [key(1)]


@pytest.mark.parametrize(
    "data",
    [
        pytest.param({"version": 99}, id="version"),
        pytest.param({"version": 1, "leases": [{"container_id": "x"}]}, id="missing-field"),
        pytest.param(
            {"version": 1, "leases": [{"container_id": "x", "ifname": "e", "addresses": ["zz"]}]}, id="bad-ip"
        ),
        pytest.param({"version": 1, "leases": 5}, id="not-a-list"),
    ],
)
def test_bad_state_is_an_error(data: dict[str, object]) -> None:
    with pytest.raises(IpamStateError):
        Ipam.from_data(node_ranges(DUAL), data)


ops = st.lists(st.tuples(st.sampled_from(["alloc", "release"]), st.integers(0, 12)), max_size=60)


@settings(max_examples=150, deadline=None)
@given(ops)
def test_leases_never_overlap_and_stay_in_range(steps: list[tuple[str, int]]) -> None:
    ranges = node_ranges(["10.0.0.0/28", "fd00::/124"])  # 13 v4 addresses, 14 v6
    ipam = Ipam(ranges)
    for op, n in steps:
        if op == "alloc":
            try:
                lease = ipam.allocate(key(n))
            except IpamExhaustedError:
                continue
            assert ipam.allocate(key(n)) == lease
        else:
            ipam.release(key(n))
        seen: set[ipaddress.IPv4Address | ipaddress.IPv6Address] = set()
        for lease in ipam.leases():
            for address in lease.addresses:
                assert address not in seen
                assert address in ranges[0 if address.version == 4 else 1]
                seen.add(address)
    restored = Ipam.from_data(ranges, ipam.to_data())
    assert restored.leases() == ipam.leases()
    assert restored.dropped == ()
