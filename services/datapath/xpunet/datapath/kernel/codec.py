"""Kernel items → an nft script, and ``nft -j`` listings → kernel items.  Pure.

``script`` turns an item difference into the native-syntax commands of one
atomic transaction (pick chains, counters, element deletes and adds);
``parse_table`` turns ``nft -j -n list table inet xpunet`` (JSON, libnftables'
schema) back into items (only the containers this version declares, and
never the learned elements of dynamic sets), so reconciliation compares like
with like.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, cast

from xpunet.datapath.kernel.render import CHAIN, COUNTER, CT_TIMEOUT, ROUTE, VIRTUAL, Delta, Items
from xpunet.datapath.kernel.ruleset import (
    CONTAINERS,
    FAMILY,
    TABLE,
    Container,
    dynamic_chain_rules,
    is_dynamic_chain,
)

_NOT_ELEMENTS = frozenset({COUNTER, ROUTE, CHAIN, CT_TIMEOUT, *VIRTUAL})


class CodecError(ValueError):
    """nft printed something this module does not understand (names the container)."""


ELEMENTS_PER_COMMAND = 500
"""nft answers a single element command of many thousands of elements with ENOBUFS: split it."""


# --- native syntax -------------------------------------------------------------------------------
#
# Native syntax rather than JSON: formatting an element is a few string joins (JSON builds a dict or
# list per component, then encodes it: twice the Python time for 110k elements), nft parses both
# about as fast, and pick chains (rules) go into the same transaction as the elements.


def _ip4(value: int) -> str:
    # the hot path of large transactions: an ipaddress object costs ~10 µs
    return f"{value >> 24}.{value >> 16 & 255}.{value >> 8 & 255}.{value & 255}"


def _ip6(value: int) -> str:
    return str(ipaddress.IPv6Address(value))


def _quote(name: object) -> str:
    text = str(name)
    if '"' in text or "\\" in text or not text:
        raise CodecError(f"interface or object name {text!r} cannot be written in an nft script")
    return f'"{text}"'


def _native_part(kind: str, interval: bool) -> Callable[[Any], str]:
    if kind == "ifname":
        return _quote
    fmt = _ip4 if kind == "ipv4" else _ip6 if kind == "ipv6" else str
    if not interval:
        return fmt

    def span(part: tuple[int, int]) -> str:
        lo, hi = part
        return fmt(lo) if lo == hi else f"{fmt(lo)}-{fmt(hi)}"

    return span


def _native_value(c: Container) -> Callable[[Any], str] | None:
    if c.data is None:
        return None
    if c.data == "verdict":
        return lambda v: f"goto {str(v)[5:]}" if str(v).startswith("goto:") else str(v)
    if c.data == "counter":
        return _quote
    if c.data in ("mark", "port"):
        return str
    if c.data in ("ipv4", "ipv6"):
        return _ip4 if c.data == "ipv4" else _ip6
    fmt = _ip4 if c.data == "ipv4_port" else _ip6
    return lambda v: f"{fmt(v[0])} . {v[1]}"


def _native_element(c: Container) -> Callable[[Any, Any], str]:
    # Backend maps hold ~90% of the elements at scale: their formatters are unrolled.
    if not c.interval and c.data == "ipv4_port":
        if c.key == ("ipv4", "port", "u32"):
            return lambda k, v: f"{_ip4(k[0])} . {k[1]} . {k[2]} : {_ip4(v[0])} . {v[1]}"
        if c.key == ("port", "u32"):
            return lambda k, v: f"{k[0]} . {k[1]} : {_ip4(v[0])} . {v[1]}"
    parts = [_native_part(k, c.interval) for k in c.key]
    value = _native_value(c)
    if len(parts) == 1:
        p0 = parts[0]
        key: Callable[[tuple[object, ...]], str] = lambda k: p0(k[0])  # noqa: E731
    else:
        key = lambda k: " . ".join([f(x) for f, x in zip(parts, k, strict=True)])  # noqa: E731
    if value is None:
        return lambda k, _v: key(k)
    val = value
    return lambda k, v: f"{key(k)} : {val(v)}"


_NATIVE: dict[str, Callable[[Any, Any], str]] = {name: _native_element(c) for name, c in CONTAINERS.items()}


def _native_elements(verb: str, items: Items, out: list[str]) -> None:
    by: dict[str, list[str]] = {}
    for (container, key), value in items.items():
        if container in _NOT_ELEMENTS or container.startswith("@"):
            continue
        elems = by.get(container)
        if elems is None:
            elems = by[container] = []
        elems.append(_NATIVE[container](key, value))
    for name, elems in sorted(by.items()):
        for i in range(0, len(elems), ELEMENTS_PER_COMMAND):
            chunk = ", ".join(elems[i : i + ELEMENTS_PER_COMMAND])
            out.append(f"{verb} element {FAMILY} {TABLE} {name} {{ {chunk} }}")


def script(delta: Delta) -> str:
    """The whole of ``delta`` (without routes) as one native nft script: one atomic transaction.

    Order: new conntrack timeout policies, new dynamic chains (pick,
    affinity learning, timeout) and their rules, new counters, element
    deletes, element adds, then counters, chains and policies nothing refers
    to any more (the kernel checks references as the batch goes, so a chain is
    deleted after the verdict map elements that jumped to it, a policy after
    the chain that set it).
    """
    out: list[str] = []
    for _, key in sorted(k for k in delta.add if k[0] == CT_TIMEOUT):
        out.append(_ct_timeout_command(str(key[0]), delta.add[(CT_TIMEOUT, key)]))
    for _, key in sorted(k for k in delta.add if k[0] == CHAIN):
        name = str(key[0])
        out.append(f"add chain {FAMILY} {TABLE} {name}")
        out.append(f"flush chain {FAMILY} {TABLE} {name}")
        out += [f"add rule {FAMILY} {TABLE} {name} {r}" for r in dynamic_chain_rules(name)]
    for _, key in sorted(k for k in delta.add if k[0] == COUNTER):
        out.append(f"add counter {FAMILY} {TABLE} {key[0]}")
    _native_elements("delete", delta.delete, out)
    _native_elements("add", delta.add, out)
    for container, key in sorted(k for k in delta.delete if k[0] == COUNTER):
        if (container, key) not in delta.add:
            out.append(f"delete counter {FAMILY} {TABLE} {key[0]}")
    for container, key in sorted(k for k in delta.delete if k[0] == CHAIN):
        if (container, key) not in delta.add:
            out.append(f"delete chain {FAMILY} {TABLE} {key[0]}")
    for container, key in sorted(k for k in delta.delete if k[0] == CT_TIMEOUT):
        if (container, key) not in delta.add:
            out.append(f"delete ct timeout {FAMILY} {TABLE} {key[0]}")
    return "\n".join(out) + "\n" if out else ""


def _ct_timeout_command(name: str, policy: object) -> str:
    # ctto_tcp4_<digest>: the protocol and family are in the name (see render._render_ct_timeouts).
    l4, l3 = name[5:8], "ip" if name[8] == "4" else "ip6"
    pairs = cast(tuple[tuple[str, int], ...], policy)
    states = ", ".join(f"{state}: {seconds}" for state, seconds in pairs)
    return (
        f"add ct timeout {FAMILY} {TABLE} {name} {{ protocol {l4}; l3proto {l3}; policy = {{ {states} }}; }}"
    )


def delete_keys_script(name: str, keys: Iterable[tuple[object, ...]]) -> str:
    """``delete element`` commands for these keys of container ``name`` (a map's values not needed)."""
    c = CONTAINERS[name]
    parts = [_native_part(k, c.interval) for k in c.key]
    elems = [" . ".join(f(x) for f, x in zip(parts, key, strict=True)) for key in keys]
    return "".join(
        f"delete element {FAMILY} {TABLE} {name} {{ {', '.join(elems[i : i + ELEMENTS_PER_COMMAND])} }}\n"
        for i in range(0, len(elems), ELEMENTS_PER_COMMAND)
    )


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
    if c.data in ("counter", "mark", "port"):
        return v
    if c.data in ("ipv4", "ipv6"):
        return _int_of(c.data, v)
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
        if "chain" in obj and is_dynamic_chain(obj["chain"]["name"]):
            view.items[(CHAIN, (obj["chain"]["name"],))] = None
            continue
        if "ct timeout" in obj:
            # Named by a digest of their policy, which nft lists without the states left at the
            # kernel's defaults: the name says it all (the target never compares the value).
            view.items[(CT_TIMEOUT, (obj["ct timeout"]["name"],))] = None
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
        if spec is None or spec.dynamic:
            continue  # another version's container, or learned elements (affinity)
        for el in s.get("elem", ()):
            if spec.data:
                k, v = el
                view.items[(spec.name, _decode_key(spec, k))] = _decode_value(spec, v)
            else:
                view.items[(spec.name, _decode_key(spec, el))] = None
    return view


def parse_map_elements(doc: Mapping[str, Any], name: str) -> Items:
    """The elements of map ``name`` in ``nft -j -n list map`` output (learned ones included)."""
    spec = CONTAINERS[name]
    out: Items = {}
    for obj in doc.get("nftables", ()):
        m = obj.get("map")
        if m is None or m.get("name") != name:
            continue
        for k, v in m.get("elem", ()):
            out[(name, _decode_key(spec, k))] = _decode_value(spec, v)
    return out
