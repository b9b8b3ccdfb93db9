"""Typed, path-tracking readers over untrusted API JSON, and the API's value rules.

Parsing never indexes a JSON value blindly: every access goes through these
helpers, which check the type and raise ``ModelError`` naming the object and the
JSON path (``spec.ingress[0].ports[1].port``).  That is what lets the parsers
promise that no ``KeyError``/``TypeError`` escapes for any input.

The value rules (label syntax, port names, IPs, CIDRs) follow the Kubernetes
API validation, so an object the API server would reject is rejected here too;
this matters for the manifest-directory source, which has no API server in
front of it.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn, TypeVar

from xpunet.model.errors import ModelError
from xpunet.model.objects import PROTOCOLS, Labels, Protocol

JSONMap = Mapping[str, Any]
S = TypeVar("S", bound=str)

# metav1 label rules: an optional DNS-subdomain prefix and a "name" of at most
# 63 characters; values are empty or a "name".
_LABEL_NAME = re.compile(r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?")
_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
# IANA_SVC_NAME: the syntax of named ports (container ports, targetPort, policy ports).
_PORT_NAME = re.compile(r"[a-z0-9]([a-z0-9-]*[a-z0-9])?")
_PREFIX_LEN = re.compile(r"[0-9]{1,3}")
# A dotted quad exactly as ipaddress prints it (no leading zeros, each octet <= 255): such
# text is already canonical, so the common case skips building an address object.
_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_CANONICAL_IPV4 = re.compile(rf"{_OCTET}\.{_OCTET}\.{_OCTET}\.{_OCTET}", re.ASCII)

# Label keys and values already found valid.  They repeat across objects (app, tier,
# pod-template-hash, ...), so most checks become one set lookup.  Bounded: cleared when full.
_VALID_CACHE_LIMIT = 20_000
_valid_label_keys: set[str] = set()
_valid_label_values: set[str] = {""}
_valid_dns_labels: set[str] = set()
_valid_port_names: set[str] = set()


@dataclass(frozen=True, slots=True)
class Obj:
    """The object being parsed, so every error can name it."""

    kind: str  # API kind, e.g. "NetworkPolicy"
    ref: str  # "namespace/name", "name", or "?"

    def error(self, path: str, problem: str) -> ModelError:
        return ModelError(self.kind, self.ref, path, problem)

    def fail(self, path: str, problem: str) -> NoReturn:
        raise self.error(path, problem)


def sub(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def describe(value: Any) -> str:
    """A short rendering of a bad value for an error message."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


# --- shapes ----------------------------------------------------------------------


def as_map(o: Obj, value: Any, path: str) -> JSONMap:
    if type(value) is dict:  # the common case, without the slower ABC check
        return value
    if not isinstance(value, Mapping):
        o.fail(path, f"expected an object, got {type(value).__name__}")
    return value


def as_list(o: Obj, value: Any, path: str) -> Sequence[Any]:
    if type(value) is list:
        return value
    if not isinstance(value, list | tuple):
        o.fail(path, f"expected a list, got {type(value).__name__}")
    return value


def as_str(o: Obj, value: Any, path: str) -> str:
    if not isinstance(value, str):
        o.fail(path, f"expected a string, got {type(value).__name__}")
    return value


def as_int(o: Obj, value: Any, path: str) -> int:
    # bool is an int subclass in Python but never a valid JSON integer here.
    if not isinstance(value, int) or isinstance(value, bool):
        o.fail(path, f"expected an integer, got {type(value).__name__}")
    return value


# The opt_*/req_* readers build the error path only when they fail: they run
# for every field of every object, and most objects are fine.


def opt_map(o: Obj, parent: JSONMap, key: str, path: str) -> JSONMap:
    """``parent[key]`` as a map; absent or null reads as an empty map."""
    value = parent.get(key)
    if type(value) is dict:
        return value
    return {} if value is None else as_map(o, value, sub(path, key))


def opt_list(o: Obj, parent: JSONMap, key: str, path: str) -> Sequence[Any]:
    """``parent[key]`` as a list; absent or null reads as an empty list."""
    value = parent.get(key)
    if type(value) is list:
        return value
    return () if value is None else as_list(o, value, sub(path, key))


def opt_str(o: Obj, parent: JSONMap, key: str, path: str) -> str | None:
    value = parent.get(key)
    if value is None or type(value) is str:
        return value
    return as_str(o, value, sub(path, key))


def req_str(o: Obj, parent: JSONMap, key: str, path: str) -> str:
    value = parent.get(key)
    if type(value) is str and value:
        return value
    if value is None or value == "":
        o.fail(sub(path, key), "is required")
    return as_str(o, value, sub(path, key))


def opt_int(o: Obj, parent: JSONMap, key: str, path: str) -> int | None:
    value = parent.get(key)
    if value is None or type(value) is int:
        return value
    return as_int(o, value, sub(path, key))


def opt_bool(o: Obj, parent: JSONMap, key: str, path: str) -> bool | None:
    value = parent.get(key)
    if value is None:
        return None
    if not isinstance(value, bool):
        o.fail(sub(path, key), f"expected a boolean, got {type(value).__name__}")
    return value


def str_list(o: Obj, parent: JSONMap, key: str, path: str) -> tuple[str, ...]:
    items = opt_list(o, parent, key, path)
    base = sub(path, key)
    return tuple(as_str(o, item, f"{base}[{i}]") for i, item in enumerate(items))


def pick(o: Obj, value: str, allowed: tuple[S, ...], path: str, *, what: str = "value") -> S:
    """``value`` as the matching member of ``allowed`` (typed as its Literal, no cast needed)."""
    for known in allowed:
        if value == known:
            return known
    raise o.error(path, f"unknown {what} {describe(value)}: must be one of {', '.join(allowed)}")


# --- names, labels, ports ----------------------------------------------------------


def check_name(o: Obj, value: str, path: str, *, label: bool = False) -> str:
    """A DNS-1123 subdomain (object names) or label (namespace names)."""
    if label:
        if value in _valid_dns_labels:  # namespace names repeat on every namespaced object
            return value
        if len(value) > 63 or not _DNS_LABEL.fullmatch(value):
            o.fail(path, f"{describe(value)} is not a valid DNS-1123 label")
        if type(value) is str:
            _remember(_valid_dns_labels, value, ())
    elif len(value) > 253 or not _DNS_SUBDOMAIN.fullmatch(value):
        o.fail(path, f"{describe(value)} is not a valid DNS-1123 subdomain")
    return value


def check_label_key(o: Obj, key: str, path: str) -> str:
    prefix, slash, name = key.rpartition("/")
    if slash and (not prefix or len(prefix) > 253 or not _DNS_SUBDOMAIN.fullmatch(prefix)):
        o.fail(path, f"label key {describe(key)} has an invalid prefix")
    if len(name) > 63 or not _LABEL_NAME.fullmatch(name):
        o.fail(path, f"label key {describe(key)} is not a valid qualified name")
    return key


def check_label_value(o: Obj, value: str, path: str) -> str:
    if value and (len(value) > 63 or not _LABEL_NAME.fullmatch(value)):
        o.fail(path, f"label value {describe(value)} is not valid")
    return value


def labels(o: Obj, parent: JSONMap, key: str, path: str) -> Labels:
    """A string→string map of labels (metadata.labels, matchLabels, a Service selector)."""
    raw = opt_map(o, parent, key, path)
    out: dict[str, str] = {}
    keys_ok, values_ok = _valid_label_keys, _valid_label_values
    for k, v in raw.items():
        if type(k) is str and type(v) is str and k in keys_ok and v in values_ok:
            out[k] = v  # seen and checked before
            continue
        base = sub(path, key)
        if not isinstance(k, str):
            o.fail(base, f"label key {describe(k)} is not a string")
        field = f"{base}[{k}]"
        check_label_key(o, k, field)
        out[k] = check_label_value(o, as_str(o, v, field), field)
        if type(k) is str and type(v) is str:  # not subclasses: their equality may differ
            _remember(keys_ok, k, ())
            _remember(values_ok, v, ("",))
    return Labels(out)


def _remember(cache: set[str], value: str, seed: tuple[str, ...]) -> None:
    if len(cache) >= _VALID_CACHE_LIMIT:
        cache.clear()
        cache.update(seed)
    cache.add(value)


def check_port(o: Obj, value: int, path: str) -> int:
    if not 1 <= value <= 65535:
        o.fail(path, f"{value} is out of range 1-65535")
    return value


def is_port_name(value: str) -> bool:
    """IANA_SVC_NAME: lowercase alphanumerics and '-', at least one letter, at most 15 characters."""
    if value in _valid_port_names:
        return True
    if (
        len(value) > 15
        or not _PORT_NAME.fullmatch(value)
        or "--" in value
        or not any(c.isalpha() for c in value)
    ):
        return False
    if type(value) is str:
        _remember(_valid_port_names, value, ())
    return True


def check_port_name(o: Obj, value: str, path: str) -> str:
    """IANA_SVC_NAME: lowercase alphanumerics and '-', at least one letter, at most 15 characters."""
    if not is_port_name(value):
        o.fail(path, f"{describe(value)} is not a valid port name (IANA_SVC_NAME)")
    return value


def port_or_name(o: Obj, parent: JSONMap, key: str, path: str) -> int | str | None:
    """An IntOrString port: a number in range or an IANA service name."""
    value = parent.get(key)
    field = sub(path, key)
    if value is None:
        return None
    if isinstance(value, str):
        return check_port_name(o, value, field)
    return check_port(o, as_int(o, value, field), field)


def protocol(o: Obj, parent: JSONMap, path: str) -> Protocol:
    value = parent.get("protocol")
    if value is None:
        return "TCP"
    field = sub(path, "protocol")
    return pick(o, as_str(o, value, field), PROTOCOLS, field, what="protocol")


# --- addresses -----------------------------------------------------------------------


def ip(o: Obj, value: Any, path: str, *, family: int | None = None) -> str:
    """A single IP address, normalised (RFC 5952 for IPv6)."""
    if type(value) is str and (family is None or family == 4) and _CANONICAL_IPV4.fullmatch(value):
        return value  # what the full check below would return for it
    text = as_str(o, value, path)
    # Zone ids and IPv4-mapped IPv6 are ambiguous; the API's strict IP validation rejects them.
    if "%" in text:
        o.fail(path, f"{describe(text)}: zone identifiers are not allowed")
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        o.fail(path, f"{describe(text)} is not a valid IP address")
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        o.fail(path, f"{describe(text)}: IPv4-mapped IPv6 addresses are not allowed")
    if family is not None and addr.version != family:
        o.fail(path, f"{describe(text)} is not an IPv{family} address")
    return str(addr)


def cidr(o: Obj, value: Any, path: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    """A CIDR, normalised to its network: host bits are cleared, not rejected.

    The API historically accepted "192.168.1.1/24" in NetworkPolicy ipBlocks and
    podCIDRs (objects created before the strict validation of KEP-4858 still
    carry them), and the API reference's own old examples used that form.  We
    read it as the network it lies in, the interpretation of most plugins.
    """
    text = as_str(o, value, path)
    addr, slash, plen = text.partition("/")
    # ipaddress also accepts a bare address (as /32) and netmask notation; a CIDR needs a prefix length.
    if not slash or not _PREFIX_LEN.fullmatch(plen):
        o.fail(path, f"{describe(text)} is not a valid CIDR (address/prefix-length)")
    ip(o, addr, path)  # the same address rules as single IPs
    try:
        return ipaddress.ip_network(text, strict=False)
    except ValueError:
        o.fail(path, f"{describe(text)} is not a valid CIDR")


def strict_subnet(
    sub: ipaddress.IPv4Network | ipaddress.IPv6Network, net: ipaddress.IPv4Network | ipaddress.IPv6Network
) -> bool:
    """``sub`` lies inside ``net`` and is smaller (same family, longer prefix)."""
    if isinstance(sub, ipaddress.IPv4Network) and isinstance(net, ipaddress.IPv4Network):
        return sub.subnet_of(net) and sub.prefixlen > net.prefixlen
    if isinstance(sub, ipaddress.IPv6Network) and isinstance(net, ipaddress.IPv6Network):
        return sub.subnet_of(net) and sub.prefixlen > net.prefixlen
    return False
