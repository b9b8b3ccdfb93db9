"""xpunet.p4 declares exactly the tables, keys, actions, parameters, sizes and counters of the P4Info.

No P4 compiler installs here, so this small parser of the program's
declarations (``action NAME(params) {...}`` and ``table NAME { key = {...}
actions = {...} ... size = N; }``) is what keeps the program and the contract
consistent.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import pytest

from xpunet.pipeline.p4info import P4_PROGRAM_PATH
from xpunet.pipeline.schema import CONTROL, SCHEMA

_ACTION = re.compile(r"\baction\s+(\w+)\s*\(([^)]*)\)")
_TABLE = re.compile(r"\btable\s+(\w+)\s*\{")
_KEY_FIELD = re.compile(r"meta\.(\w+)\s*:\s*(\w+)\s*@name\(\"(\w+)\"\)\s*;")
_PARAM = re.compile(r"bit<(\d+)>\s+(\w+)|(\w+_t)\s+(\w+)")
_TYPEDEFS = re.compile(r"typedef\s+bit<(\d+)>\s+(\w+)\s*;")


@dataclass
class P4Table:
    name: str
    key: list[tuple[str, str]] = field(default_factory=list)  # (name, match kind)
    key_meta: list[str] = field(default_factory=list)  # the metadata field each key reads
    actions: list[tuple[str, bool]] = field(default_factory=list)  # (name, defaultonly)
    default: str | None = None
    size: int | None = None
    add_on_miss: bool = False
    direct_counter: str | None = None


def _strip_comments(text: str) -> str:
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    return re.sub(r"//[^\n]*", "", text)


def _block(text: str, start: int) -> str:
    """The text between the brace at/after ``start`` and its matching close."""
    i = text.index("{", start)
    depth = 0
    for j in range(i, len(text)):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            return text[i + 1 : j]
    raise ValueError("unbalanced braces")


def metadata_widths(text: str) -> dict[str, int]:
    """Field name → width of ``struct metadata_t`` (bool is 1 bit)."""
    text = _strip_comments(text)
    typedefs = {name: int(w) for w, name in _TYPEDEFS.findall(text)}
    body = _block(text, text.index("struct metadata_t"))
    out: dict[str, int] = {}
    for decl in filter(None, (d.strip() for d in body.split(";"))):
        typ, name = decl.split()
        m = re.fullmatch(r"bit<(\d+)>", typ)
        out[name] = int(m.group(1)) if m else 1 if typ == "bool" else typedefs[typ]
    return out


def parse_program(text: str) -> tuple[dict[str, list[tuple[str, int]]], dict[str, P4Table], dict[str, int]]:
    text = _strip_comments(text)
    typedefs = {name: int(w) for w, name in _TYPEDEFS.findall(text)}
    actions: dict[str, list[tuple[str, int]]] = {}
    for m in _ACTION.finditer(text):
        params = []
        for p in filter(None, (s.strip() for s in m.group(2).split(","))):
            pm = _PARAM.fullmatch(p)
            assert pm is not None, f"action {m.group(1)}: cannot read parameter {p!r}"
            if pm.group(1):
                params.append((pm.group(2), int(pm.group(1))))
            else:
                params.append((pm.group(4), typedefs[pm.group(3)]))
        actions[m.group(1)] = params
    tables: dict[str, P4Table] = {}
    for m in _TABLE.finditer(text):
        body = _block(text, m.end() - 1)
        t = P4Table(m.group(1))
        key_at = re.search(r"\bkey\s*=\s*\{", body)
        if key_at:
            found = _KEY_FIELD.findall(_block(body, key_at.end() - 1))
            t.key = [(name, kind) for _, kind, name in found]
            t.key_meta = [meta for meta, _, _ in found]
        acts_at = re.search(r"\bactions\s*=\s*\{", body)
        assert acts_at is not None, f"table {t.name} has no actions"
        for a in filter(None, (s.strip() for s in _block(body, acts_at.end() - 1).split(";"))):
            t.actions.append((a.split()[-1], "@defaultonly" in a))
        if d := re.search(r"const\s+default_action\s*=\s*(\w+)", body):
            t.default = d.group(1)
        if s := re.search(r"\bsize\s*=\s*(\d+)\s*;", body):
            t.size = int(s.group(1))
        t.add_on_miss = bool(re.search(r"add_on_miss\s*=\s*true", body))
        if c := re.search(r"pna_direct_counter\s*=\s*(\w+)", body):
            t.direct_counter = c.group(1)
        tables[t.name] = t
    counters = {m.group(1): 1 for m in re.finditer(r"DirectCounter<bit<\d+>>\([^)]*\)\s*(\w+)\s*;", text)}
    return actions, tables, counters


@pytest.fixture(scope="module")
def program() -> tuple[dict[str, list[tuple[str, int]]], dict[str, P4Table], dict[str, int]]:
    return parse_program(P4_PROGRAM_PATH.read_text())


def test_program_declares_every_table_of_the_p4info(program) -> None:  # type: ignore[no-untyped-def]
    _, tables, _ = program
    assert set(tables) == {t.alias for t in SCHEMA.tables}


@pytest.mark.parametrize("spec", SCHEMA.tables, ids=lambda t: t.alias)
def test_table_matches_p4info(program, spec) -> None:  # type: ignore[no-untyped-def]
    actions, tables, counters = program
    t = tables[spec.alias]
    assert t.key == [(f.name, f.match_kind) for f in spec.key]
    assert t.size == spec.size
    assert t.default == spec.default_action.removeprefix(f"{CONTROL}.")
    assert [(a, d) for a, d in t.actions] == [
        (r.action.removeprefix(f"{CONTROL}."), r.scope == "default_only") for r in spec.actions
    ]
    assert t.add_on_miss == spec.learned
    if spec.direct_counter is None:
        assert t.direct_counter is None
    else:
        counter = next(c for c in SCHEMA.counters if c.id == spec.direct_counter)
        assert t.direct_counter == counter.name.removeprefix(f"{CONTROL}.")
        assert t.direct_counter in counters
    widths = metadata_widths(P4_PROGRAM_PATH.read_text())
    assert [widths[m] for m in t.key_meta] == [f.bitwidth for f in spec.key]
    assert all(a in actions for a, _ in t.actions)


@pytest.mark.parametrize("spec", SCHEMA.actions, ids=lambda a: a.alias)
def test_action_params_match_p4info(program, spec) -> None:  # type: ignore[no-untyped-def]
    actions, _, _ = program
    assert actions[spec.alias] == [(p.name, p.bitwidth) for p in spec.params]


def test_program_declares_no_action_outside_the_contract(program) -> None:  # type: ignore[no-untyped-def]
    actions, _, _ = program
    assert set(actions) == {a.alias for a in SCHEMA.actions}


def test_parser_reads_a_small_program() -> None:
    text = """
    typedef bit<9> port_t;
    action a(bit<8> x, port_t p) { }  // comment
    /* block */ table t { key = { meta.x : exact @name("x"); meta.y : lpm @name("y"); }
      actions = { a; @defaultonly b; } const default_action = b; size = 7; }
    """
    actions, tables, _ = parse_program(text)
    assert actions == {"a": [("x", 8), ("p", 9)]}
    t = tables["t"]
    assert (t.key, t.actions, t.default, t.size) == (
        [("x", "exact"), ("y", "lpm")],
        [("a", False), ("b", True)],
        "b",
        7,
    )
