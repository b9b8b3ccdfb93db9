"""Kernel items ↔ nftables JSON (libnftables' ``nft -j`` schema).  Pure.

``transaction`` turns an item difference into the commands of one atomic
``nft -j -f -`` run; ``parse_table`` turns ``nft -j -n list table inet xpunet``
back into items (only the containers this version declares, and never the
learned elements of dynamic sets), so reconciliation compares like with like.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, cast

from xpunet.datapath.kernel.render import CHAIN, COUNTER, ROUTE, Delta, Items
from xpunet.datapath.kernel.ruleset import CONTAINERS, FAMILY, PICK_CHAIN, TABLE, Container, pick_chain_rules

Json = dict[str, Any]


class CodecError(ValueError):
    """nft printed something this module does not understand (names the container)."""


def _addr(kind: str, value: int) -> str:
    if kind == "ipv4":  # the hot path of large transactions: ipaddress objects cost ~10 µs each
        return f"{value >> 24}.{value >> 16 & 255}.{value >> 8 & 255}.{value & 255}"
    return str(ipaddress.IPv6Address(value))


def _encode_part(kind: str, part: object, interval: bool) -> object:
    if kind == "ifname":
        return part
    if interval:
        lo, hi = cast(tuple[int, int], part)
        if kind in ("ipv4", "ipv6"):
            return _addr(kind, lo) if lo == hi else {"range": [_addr(kind, lo), _addr(kind, hi)]}
        return lo if lo == hi else {"range": [lo, hi]}
    if kind in ("ipv4", "ipv6"):
        return _addr(kind, cast(int, part))
    return part


def _encode_key(c: Container, key: tuple[object, ...]) -> object:
    parts = [_encode_part(k, p, c.interval) for k, p in zip(c.key, key, strict=True)]
    return parts[0] if len(parts) == 1 else {"concat": parts}


def _encode_value(c: Container, value: object) -> object:
    if c.data == "verdict":
        v = str(value)
        if v.startswith("goto:"):
            return {"goto": {"target": v[5:]}}
        return {v: None}
    if c.data == "counter":
        return value
    addr, port = cast(tuple[int, int], value)
    return {"concat": [_addr("ipv4" if c.data == "ipv4_port" else "ipv6", addr), port]}


def _elements(items: Items) -> dict[str, list[object]]:
    by: dict[str, list[object]] = {}
    for (container, key), value in items.items():
        if container in (COUNTER, ROUTE, CHAIN):
            continue
        c = CONTAINERS[container]
        k = _encode_key(c, key)
        by.setdefault(container, []).append([k, _encode_value(c, value)] if c.data else k)
    return by


ELEMENTS_PER_COMMAND = 500
"""nft answers a single element command of many thousands of elements with ENOBUFS: split it."""


def _element_cmds(verb: str, by: dict[str, list[object]]) -> list[Json]:
    out: list[Json] = []
    for name, elems in sorted(by.items()):
        for i in range(0, len(elems), ELEMENTS_PER_COMMAND):
            chunk = elems[i : i + ELEMENTS_PER_COMMAND]
            out.append({verb: {"element": {"family": FAMILY, "table": TABLE, "name": name, "elem": chunk}}})
    return out


def _obj(kind: str, name: str, **extra: object) -> Json:
    return {kind: {"family": FAMILY, "table": TABLE, "name": name, **extra}}


def transaction(delta: Delta) -> list[Json]:
    """Commands for one transaction: new counters, element deletes, element adds, old counters.

    Deletes come before adds so a changed map value or a re-cut interval never
    overlaps its old self; counters exist before elements name them and go
    after the last element naming them.
    """
    cmds: list[Json] = []
    for _, key in sorted(k for k in delta.add if k[0] == COUNTER):
        cmds.append({"add": _obj("counter", str(key[0]))})
    cmds += _element_cmds("delete", _elements(delta.delete))
    cmds += _element_cmds("add", _elements(delta.add))
    for container, key in sorted(k for k in delta.delete if k[0] == COUNTER):
        if (container, key) not in delta.add:
            cmds.append({"delete": _obj("counter", str(key[0]))})
    return cmds


# --- reading back ------------------------------------------------------------------------------


def _int_of(kind: str, v: object) -> int:
    if kind in ("ipv4", "ipv6"):
        return int(ipaddress.ip_address(str(v)))
    if isinstance(v, int):
        return v
    raise CodecError(f"expected a number for {kind}, got {v!r}")


def _decode_part(kind: str, v: object, interval: bool) -> object:
    if kind == "ifname":
        return v
    if isinstance(v, dict) and "range" in v:
        lo, hi = v["range"]
        return (_int_of(kind, lo), _int_of(kind, hi))
    if isinstance(v, dict) and "prefix" in v:
        net = ipaddress.ip_network(f"{v['prefix']['addr']}/{v['prefix']['len']}")
        return (int(net.network_address), int(net.broadcast_address))
    n = _int_of(kind, v)
    return (n, n) if interval else n


def _decode_value(c: Container, v: object) -> object:
    if c.data == "verdict":
        if isinstance(v, dict) and "goto" in v:
            return f"goto:{v['goto']['target']}"
        if isinstance(v, dict) and len(v) == 1:
            return next(iter(v))
        raise CodecError(f"{c.name}: unexpected verdict {v!r}")
    if c.data == "counter":
        return v
    if isinstance(v, dict) and "concat" in v:
        addr, port = v["concat"]
        return (_int_of("ipv4" if c.data == "ipv4_port" else "ipv6", addr), int(port))
    raise CodecError(f"{c.name}: unexpected backend {v!r}")


def _decode_key(c: Container, k: object) -> tuple[object, ...]:
    if isinstance(k, dict) and "elem" in k:  # an element carrying a timeout, counter or comment
        k = k["elem"]["val"]
    parts = k["concat"] if isinstance(k, dict) and "concat" in k else [k]
    if len(parts) != len(c.key):
        raise CodecError(f"{c.name}: element {k!r} does not have {len(c.key)} components")
    return tuple(_decode_part(kind, p, c.interval) for kind, p in zip(c.key, parts, strict=True))


@dataclass(slots=True)
class TableView:
    """What ``list table`` shows of xpunet's table."""

    items: Items = field(default_factory=dict)
    containers: dict[str, str] = field(default_factory=dict)  # name → "set" | "map"
    counters: dict[str, tuple[int, int]] = field(default_factory=dict)  # name → (packets, bytes)


def parse_table(doc: Mapping[str, Any]) -> TableView:
    """Items, container kinds and counter values from ``nft -j -n list table inet xpunet`` output."""
    view = TableView()
    for obj in doc.get("nftables", ()):
        if "chain" in obj and PICK_CHAIN.match(obj["chain"]["name"]):
            view.items[(CHAIN, (obj["chain"]["name"],))] = None
            continue
        if "counter" in obj:
            c = obj["counter"]
            view.counters[c["name"]] = (int(c.get("packets", 0)), int(c.get("bytes", 0)))
            view.items[(COUNTER, (c["name"],))] = None
            continue
        kind = "set" if "set" in obj else "map" if "map" in obj else None
        if kind is None:
            continue
        s = obj[kind]
        view.containers[s["name"]] = kind
        spec = CONTAINERS.get(s["name"])
        if spec is None:
            continue
        for el in s.get("elem", ()):
            if spec.data:
                k, v = el
                view.items[(spec.name, _decode_key(spec, k))] = _decode_value(spec, v)
            else:
                view.items[(spec.name, _decode_key(spec, el))] = None
    return view


def chain_scripts(delta: Delta) -> tuple[str, str]:
    """nft scripts creating the pick chains ``delta`` adds (run before its transaction) and
    deleting those it removes (run after, once no verdict map element jumps there)."""
    create = []
    for _, key in sorted(k for k in delta.add if k[0] == CHAIN):
        name = str(key[0])
        create.append(f"add chain {FAMILY} {TABLE} {name}")
        create.append(f"flush chain {FAMILY} {TABLE} {name}")
        create += [f"add rule {FAMILY} {TABLE} {name} {r}" for r in pick_chain_rules(name)]
    delete = [f"delete chain {FAMILY} {TABLE} {k[1][0]}" for k in sorted(delta.delete) if k[0] == CHAIN]
    return "\n".join(create), "\n".join(delete)
