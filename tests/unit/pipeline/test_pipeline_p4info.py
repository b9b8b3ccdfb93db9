"""The P4Info text file is the contract: it parses, and the pure schema mirrors it exactly."""

from __future__ import annotations

from p4.config.v1 import p4info_pb2

from xpunet.pipeline.p4info import P4INFO_PATH, load_p4info, render_text, schema_from_p4info
from xpunet.pipeline.schema import PIPELINE_VERSION, PRIORITY_KINDS, SCHEMA


def test_text_file_parses_into_p4info() -> None:
    info = load_p4info()
    assert isinstance(info, p4info_pb2.P4Info)
    assert info.pkg_info.name == "xpunet"
    assert info.pkg_info.version == PIPELINE_VERSION
    assert info.pkg_info.arch == "pna"


def test_mirrored_schema_equals_parsed_p4info() -> None:
    assert schema_from_p4info(load_p4info()) == SCHEMA


def test_file_is_up_to_date_with_schema() -> None:
    # Regenerate with `.venv/bin/python -m xpunet.pipeline.p4info --write`.
    assert P4INFO_PATH.read_text() == render_text()


def test_ids_are_unique_and_prefixed() -> None:
    info = load_p4info()
    ids = [t.preamble.id for t in info.tables] + [a.preamble.id for a in info.actions]
    ids += [c.preamble.id for c in info.counters] + [c.preamble.id for c in info.direct_counters]
    assert len(ids) == len(set(ids))
    assert all(t.preamble.id >> 24 == p4info_pb2.P4Ids.TABLE for t in info.tables)
    assert all(a.preamble.id >> 24 == p4info_pb2.P4Ids.ACTION for a in info.actions)
    assert all(c.preamble.id >> 24 == p4info_pb2.P4Ids.DIRECT_COUNTER for c in info.direct_counters)
    assert all(c.preamble.id >> 24 == p4info_pb2.P4Ids.COUNTER for c in info.counters)


def test_every_table_fails_closed_or_continues_with_a_const_default() -> None:
    info = load_p4info()
    for t in info.tables:
        assert t.const_default_action_id, t.preamble.name
        scopes = {r.id: r.scope for r in t.action_refs}
        assert scopes[t.const_default_action_id] == p4info_pb2.ActionRef.DEFAULT_ONLY


def test_both_families_and_readable_names() -> None:
    names = {t.alias for t in SCHEMA.tables}
    for base in ("endpoint_by_ip", "conntrack", "service_frontend", "maglev_backend", "fib", "ip_set_src"):
        assert {f"{base}_v4", f"{base}_v6"} <= names
    assert all(t.brief for t in SCHEMA.tables)
    assert all(a.brief for a in SCHEMA.actions)


def test_acl_tables_use_ternary_sets_and_port_ranges_with_priorities() -> None:
    for alias in ("acl_ingress", "acl_egress"):
        t = SCHEMA.table(alias)
        kinds = {f.name: f.match_kind for f in t.key}
        assert kinds["dst_port"] == "range"
        assert "ternary" in kinds.values()
        assert t.needs_priority
        assert t.direct_counter is not None
    assert {"ternary", "range", "optional"} == PRIORITY_KINDS
