"""Counter totals (pure): entries mapped back to their origin, monotonic across entry replacement."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from xpunet.datapath.counters import (
    DEFAULT_DENY,
    NOT_ISOLATED,
    CounterReport,
    CounterTotals,
    RuleOrigin,
    ServiceOrigin,
    classify,
    drops_from_kernel,
)
from xpunet.datapath.service import Settings
from xpunet.pipeline.entries import EntryKey
from xpunet.runtime.settings import SettingsError, build_settings, cli_layer
from xpunet.wire import decode_object, encode_object

RULE_A = "shop/allow-web ingress[0] for shop/db"
RULE_A2 = "shop/allow-web ingress[0] for shop/db2"
RULE_B = "shop/allow-web ingress[1] for shop/db"
OPEN = "shop/web egress not isolated"
SVC = "service shop/web tcp/80 ipv4"


def key(n: int, table: str = "acl_ingress") -> EntryKey:
    return (f"ingress.{table}", (("endpoint_id", n),), n)  # type: ignore[return-value]  # opaque to the totals


ORIGINS: dict[EntryKey, tuple[str, str]] = {
    key(1): ("acl_ingress", RULE_A),
    key(2): ("acl_ingress", RULE_A2),
    key(3): ("acl_ingress", RULE_B),
    key(4, "acl_egress"): ("acl_egress", OPEN),
    key(5, "service_frontend_v4"): ("service_frontend_v4", SVC),
    key(6, "node_port_v4"): ("node_port_v4", SVC + " (external)"),
    key(7, "fib_v4"): ("fib_v4", "route to node n2"),
}


def test_classify_origins() -> None:
    assert classify("acl_ingress", RULE_A) == RuleOrigin("shop", "allow-web", "ingress", 0, "allow")
    assert classify("acl_egress", OPEN) == RuleOrigin("shop", NOT_ISOLATED, "egress", -1, "allow")
    assert classify("service_frontend_v6", "service shop/web udp/53 ipv6") == ServiceOrigin(
        "shop", "web", "udp/53"
    )
    assert classify("node_port_v4", SVC + " (external)") == ServiceOrigin("shop", "web", "tcp/80")
    # Merged origins count for the first; unknown shapes and other tables are not reported.
    assert classify("acl_ingress", RULE_B + " + " + RULE_A) == RuleOrigin(
        "shop", "allow-web", "ingress", 1, "allow"
    )
    assert classify("acl_ingress", "something else") is None
    assert classify("fib_v4", "route to node n2") is None
    assert classify("maglev_backend_v4", SVC) is None


def test_rules_of_a_policy_aggregate_and_drops_become_default_denies() -> None:
    t = CounterTotals()
    t.fold(
        {key(1): (2, 200), key(2): (3, 300), key(3): (1, 60), key(4, "acl_egress"): (5, 500)},
        ORIGINS.get,
        {"policy_ingress": (4, 240), "no_route": (1, 40)},
    )
    assert t.policy_metric() == {
        ("", DEFAULT_DENY, "ingress", "deny"): (4, 240),
        ("shop", NOT_ISOLATED, "egress", "allow"): (5, 500),
        ("shop", "allow-web", "ingress", "allow"): (6, 560),
    }
    rules = {(r.policy, r.index): (r.packets, r.bytes) for r in t.rules()}
    assert rules[("allow-web", 0)] == (5, 500)  # summed over the endpoints the rule applies to
    assert rules[("allow-web", 1)] == (1, 60)
    assert t.drop_metric() == {("acl_ingress", "policy_ingress"): (4, 240), ("fib", "no_route"): (1, 40)}


def test_services_sum_internal_and_external_frontends() -> None:
    t = CounterTotals()
    t.fold({key(5, "service_frontend_v4"): (2, 120), key(6, "node_port_v4"): (1, 60)}, ORIGINS.get)
    assert t.service_metric() == {("shop", "web", "tcp/80"): (3, 180)}
    assert t.drop_metric() == {}


def test_monotonic_across_replacement_restart_and_disappearance() -> None:
    t = CounterTotals()
    t.fold({key(1): (10, 1000)}, ORIGINS.get)
    t.fold({key(1): (12, 1200)}, ORIGINS.get)  # +2
    t.fold({key(1): (3, 300)}, ORIGINS.get)  # replaced (or target restart): restarted from 0, +3
    t.fold({}, ORIGINS.get)  # gone: the total stays
    t.fold({key(1): (1, 100)}, ORIGINS.get)  # back again: +1
    assert t.policy_metric()[("shop", "allow-web", "ingress", "allow")] == (16, 1600)
    # Movement of an entry that is not desired any more is not attributed (nor counted later).
    t.fold({key(1): (4, 400)}, lambda _k: None)
    t.fold({key(1): (5, 500)}, ORIGINS.get)
    assert t.policy_metric()[("shop", "allow-web", "ingress", "allow")] == (17, 1700)
    assert t.polls == 7


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.dictionaries(st.sampled_from(sorted(ORIGINS)), st.tuples(st.integers(0, 50), st.integers(0, 5000)))
    )
)
def test_totals_never_go_backwards(reads: list[dict[EntryKey, tuple[int, int]]]) -> None:
    t = CounterTotals()
    before: dict[tuple[str, ...], tuple[int, int]] = {}
    for read in reads:
        t.fold(read, ORIGINS.get, {"policy_egress": (len(read), len(read) * 10)})
        now: dict[tuple[str, ...], tuple[int, int]] = {}
        now.update({("policy", *k): v for k, v in t.policy_metric().items()})
        now.update({("service", *k): v for k, v in t.service_metric().items()})
        now.update({("drop", *k): v for k, v in t.drop_metric().items()})
        for k, (p, b) in before.items():
            assert now[k][0] >= p
            assert now[k][1] >= b
        before = now


def test_kernel_drop_names() -> None:
    assert drops_from_kernel(
        {"drop_no_route": (1, 10), "deny_egress": (2, 20), "drop_policy_egress": (1, 5)}
    ) == {
        "no_route": (1, 10),
        "policy_egress": (3, 25),
    }


def test_report_round_trips_on_the_wire() -> None:
    t = CounterTotals()
    t.fold({key(1): (2, 200), key(5, "service_frontend_v4"): (1, 60)}, ORIGINS.get, {"no_route": (1, 40)})
    report = t.report("n1", "softipu x", updated_at=5.0)
    back = decode_object(encode_object(report))
    assert isinstance(back, CounterReport)
    assert back == report
    assert back.rules[0].policy == "allow-web"


def test_the_poll_interval_is_a_datapath_setting() -> None:
    settings = build_settings(Settings, [cli_layer(["datapath.counter_interval=2.5"])])
    assert settings.datapath.counter_interval == 2.5
    assert build_settings(Settings, []).datapath.counter_interval == 10.0
    with pytest.raises(SettingsError, match="counter_interval"):
        build_settings(Settings, [cli_layer(["datapath.counter_interval=-1"])])
    with pytest.raises(SettingsError, match="counter_intervall"):
        build_settings(Settings, [cli_layer(["datapath.counter_intervall=1"])])
