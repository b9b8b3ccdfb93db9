"""The P4Info adapter: render the pipeline schema as a P4Info message and read the text file back.

This is the only pipeline module that imports the ``p4`` protos.  The pure
rooms (schema, entries, lowering, interpreter) work on ``xpunet.pipeline.schema``;
``load_p4info()`` gives the datapath the message it pushes with
SetForwardingPipelineConfig, and ``schema_from_p4info`` turns any P4Info back
into the plain schema so a test can check that the file and the mirror agree.

Regenerate the text file after changing the schema::

    .venv/bin/python -m xpunet.pipeline.p4info --write
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from google.protobuf import text_format
from p4.config.v1 import p4info_pb2

from xpunet.pipeline.schema import (
    PIPELINE_ARCH,
    PIPELINE_NAME,
    PIPELINE_VERSION,
    SCHEMA,
    ActionRef,
    ActionSpec,
    CounterSpec,
    FieldSpec,
    MatchKind,
    ParamSpec,
    Schema,
    Scope,
    TableSpec,
)

log = logging.getLogger(__name__)

P4INFO_PATH = Path(__file__).with_name("xpunet.p4info.txtpb")
P4_PROGRAM_PATH = Path(__file__).with_name("xpunet.p4")
LEARNED_ANNOTATION = "@add_on_miss"

_HEADER = (
    "# xpunet pipeline contract (P4Runtime P4Info, protobuf text format).\n"
    "# Generated from libs/xpunet/pipeline/schema.py by `python -m xpunet.pipeline.p4info --write`;\n"
    "# the P4-16 PNA program implementing it is xpunet.p4 beside this file.  See docs/pipeline.md.\n"
)

_MATCH_TO_PB: dict[str, int] = {
    "exact": p4info_pb2.MatchField.EXACT,
    "lpm": p4info_pb2.MatchField.LPM,
    "ternary": p4info_pb2.MatchField.TERNARY,
    "range": p4info_pb2.MatchField.RANGE,
    "optional": p4info_pb2.MatchField.OPTIONAL,
}
_MATCH_FROM_PB: dict[int, MatchKind] = {
    p4info_pb2.MatchField.EXACT: "exact",
    p4info_pb2.MatchField.LPM: "lpm",
    p4info_pb2.MatchField.TERNARY: "ternary",
    p4info_pb2.MatchField.RANGE: "range",
    p4info_pb2.MatchField.OPTIONAL: "optional",
}
_SCOPE_TO_PB: dict[str, int] = {
    "table_and_default": p4info_pb2.ActionRef.TABLE_AND_DEFAULT,
    "table_only": p4info_pb2.ActionRef.TABLE_ONLY,
    "default_only": p4info_pb2.ActionRef.DEFAULT_ONLY,
}
_SCOPE_FROM_PB: dict[int, Scope] = {v: k for k, v in _SCOPE_TO_PB.items()}  # type: ignore[misc]  # keys are Scope literals


class P4InfoError(ValueError):
    """The P4Info does not describe a pipeline this code understands (names the element)."""


def _preamble(pre: p4info_pb2.Preamble, id_: int, name: str, brief: str) -> None:
    pre.id = id_
    pre.name = name
    pre.alias = name.rsplit(".", 1)[-1]
    pre.doc.brief = brief


def schema_to_p4info(schema: Schema = SCHEMA) -> p4info_pb2.P4Info:
    """The P4Info message of a schema."""
    info = p4info_pb2.P4Info()
    info.pkg_info.name = PIPELINE_NAME
    info.pkg_info.version = PIPELINE_VERSION
    info.pkg_info.arch = PIPELINE_ARCH
    info.pkg_info.doc.brief = (
        "Kubernetes pod networking, NetworkPolicy and Service load balancing, IPv4 and IPv6."
    )
    actions = {a.name: a for a in schema.actions}
    for t in schema.tables:
        pt = info.tables.add()
        _preamble(pt.preamble, t.id, t.name, t.brief)
        if t.learned:
            # PNA `add_on_miss = true`: the target adds entries; P4Info has no field for it.
            pt.preamble.annotations.append(LEARNED_ANNOTATION)
        for f in t.key:
            mf = pt.match_fields.add()
            mf.id, mf.name, mf.bitwidth, mf.match_type = f.id, f.name, f.bitwidth, _MATCH_TO_PB[f.match_kind]  # type: ignore[assignment]  # enum value is an int
        for ref in t.actions:
            ar = pt.action_refs.add()
            ar.id = actions[ref.action].id
            ar.scope = _SCOPE_TO_PB[ref.scope]  # type: ignore[assignment]  # enum value is an int
        pt.const_default_action_id = actions[t.default_action].id
        if t.direct_counter is not None:
            pt.direct_resource_ids.append(t.direct_counter)
        pt.size = t.size
    for a in schema.actions:
        pa = info.actions.add()
        _preamble(pa.preamble, a.id, a.name, a.brief)
        for p in a.params:
            pp = pa.params.add()
            pp.id, pp.name, pp.bitwidth = p.id, p.name, p.bitwidth
    tables = {t.name: t for t in schema.tables}
    for c in schema.counters:
        if c.direct_table is not None:
            dc = info.direct_counters.add()
            _preamble(dc.preamble, c.id, c.name, c.brief)
            dc.spec.unit = p4info_pb2.CounterSpec.BOTH
            dc.direct_table_id = tables[c.direct_table].id
        else:
            ic = info.counters.add()
            _preamble(ic.preamble, c.id, c.name, c.brief)
            ic.spec.unit = p4info_pb2.CounterSpec.BOTH
            ic.size = c.size
    return info


def render_text(schema: Schema = SCHEMA) -> str:
    return _HEADER + text_format.MessageToString(schema_to_p4info(schema))


def parse_text(text: str) -> p4info_pb2.P4Info:
    """Parse P4Info text format; a syntax error becomes a :class:`P4InfoError` with the position."""
    try:
        return text_format.Parse(text, p4info_pb2.P4Info())
    except text_format.ParseError as exc:
        raise P4InfoError(f"P4Info text does not parse: {exc}") from exc


def load_p4info(path: Path = P4INFO_PATH) -> p4info_pb2.P4Info:
    """The pipeline's P4Info message, read from the text file in the repository."""
    return parse_text(path.read_text())


def schema_from_p4info(info: p4info_pb2.P4Info) -> Schema:
    """The plain schema a P4Info describes (for the mirror check and for foreign P4Infos)."""
    action_names = {a.preamble.id: a.preamble.name for a in info.actions}
    direct = {c.direct_table_id: c.preamble.id for c in info.direct_counters}
    tables: list[TableSpec] = []
    for t in info.tables:
        name = t.preamble.name
        try:
            key = tuple(
                FieldSpec(m.id, m.name, m.bitwidth, _MATCH_FROM_PB[m.match_type]) for m in t.match_fields
            )
            refs = tuple(ActionRef(action_names[r.id], _SCOPE_FROM_PB[r.scope]) for r in t.action_refs)
            default = action_names[t.const_default_action_id]
        except KeyError as exc:
            raise P4InfoError(f"table {name}: unknown match kind, action id or scope {exc}") from exc
        tables.append(
            TableSpec(
                t.preamble.id,
                name,
                key,
                refs,
                default,
                t.size,
                t.preamble.doc.brief,
                learned=LEARNED_ANNOTATION in t.preamble.annotations,
                direct_counter=direct.get(t.preamble.id),
            )
        )
    actions = tuple(
        ActionSpec(
            a.preamble.id,
            a.preamble.name,
            tuple(ParamSpec(p.id, p.name, p.bitwidth) for p in a.params),
            a.preamble.doc.brief,
        )
        for a in info.actions
    )
    table_names = {t.preamble.id: t.preamble.name for t in info.tables}
    counters = [
        CounterSpec(
            c.preamble.id, c.preamble.name, 0, c.preamble.doc.brief, table_names.get(c.direct_table_id)
        )
        for c in info.direct_counters
    ]
    counters += [
        CounterSpec(c.preamble.id, c.preamble.name, c.size, c.preamble.doc.brief) for c in info.counters
    ]
    return Schema(tuple(tables), actions, tuple(counters))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="render the xpunet P4Info text file from the schema")
    parser.add_argument("--write", action="store_true", help=f"write {P4INFO_PATH.name} (default: print)")
    args = parser.parse_args(argv)
    text = render_text()
    if args.write:
        P4INFO_PATH.write_text(text)
        log.info("wrote %s", P4INFO_PATH)
    else:
        print(text, end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
