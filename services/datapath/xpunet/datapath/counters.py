"""Counter statistics of a node: the target's raw counters folded into per-origin running totals.  Pure.

The target counts per table entry (P4 direct counters, the kernel target's named
nft counters) and per drop reason (the ``drop_reasons`` counter, the kernel's
``drop_<reason>``/``deny_<direction>``).  Entry counters mean little to a network
engineer, and they restart from zero when an entry is deleted and re-added or the
target restarts.  :class:`CounterTotals` maps each entry back to what it came from,
through the ``origin`` the lowering recorded on it (``xpunet.pipeline.groups``):

* an ACL rule: ``"<ns>/<policy> <direction>[<index>] for <ns>/<pod>"`` → the rule
  (namespace, policy, direction, index), summed over the endpoints it applies to;
* an open direction: ``"<ns>/<pod> <direction> not isolated"`` → (namespace,
  ``(not isolated)``, direction);
* a service frontend (``service_frontend_*``, ``node_port_*``):
  ``"service <ns>/<name> <proto>/<port> <family>"`` → (namespace, service, port);
* a drop reason → the table whose default action (or drop) counts it.

Running totals only grow: a raw counter that went down (its entry was replaced,
the target restarted) contributes its new value whole, and so does the counter
of an entry the datapath deleted since the last read (:meth:`CounterTotals.forget`).  An entry merged from
several rules (``"a + b"``, equal keys) is counted for the first.  Totals of
origins that disappeared are kept (a counter never goes backwards while the
process lives).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Final, TypeVar

from xpunet.pipeline.entries import EntryKey
from xpunet.wire import register

COUNTERS_SCHEMA: Final = "status.datapath_counters"

# Labels of the policy metric for what is not one NetworkPolicy's rule.
NOT_ISOLATED: Final = "(not isolated)"
DEFAULT_DENY: Final = "(default deny)"

# Which table's default action (or drop) counts each drop reason (xpunet.pipeline.schema.DROP_REASONS).
DROP_TABLES: Final[Mapping[str, str]] = {
    "unknown_port": "port_info",
    "spoofed_source": "endpoint_by_ip",
    "policy_egress": "acl_egress",
    "policy_ingress": "acl_ingress",
    "no_route": "fib",
    "no_backend": "backend_group",
    "unknown_backend_group": "backend_group",
}

_RULE = re.compile(r"^(?P<ns>[^/\s]+)/(?P<policy>\S+) (?P<dir>ingress|egress)\[(?P<idx>\d+)\] for \S+$")
_OPEN = re.compile(r"^(?P<ns>[^/\s]+)/\S+ (?P<dir>ingress|egress) not isolated$")
_SERVICE = re.compile(r"^service (?P<ns>[^/\s]+)/(?P<svc>\S+) (?P<port>\S+) \S+( \(external\))?$")
_ACL_TABLES: Final = frozenset({"acl_ingress", "acl_egress"})
_FRONTEND_TABLES: Final = frozenset(
    {"service_frontend_v4", "service_frontend_v6", "node_port_v4", "node_port_v6"}
)
# The tables whose entry counters are reported (a target that can read per table reads only these,
# not the millions of Maglev buckets).
REPORTED_TABLES: Final = _ACL_TABLES | _FRONTEND_TABLES


def status_key(node_token: str) -> str:
    """Key of a node's counter report in ``xpunet-status`` (beside ``datapath.<token>``)."""
    return f"counters.datapath.{node_token}"


@dataclass(frozen=True, slots=True)
class RuleOrigin:
    namespace: str
    policy: str  # NOT_ISOLATED / DEFAULT_DENY for what no policy's rule decided
    direction: str  # ingress / egress
    index: int  # the rule's index in the policy's direction; -1 when not a rule
    verdict: str  # allow / deny


@dataclass(frozen=True, slots=True)
class ServiceOrigin:
    namespace: str
    service: str
    port: str  # "tcp/80"


Origin = RuleOrigin | ServiceOrigin


def classify(alias: str, origin: str) -> Origin | None:
    """What an entry of table ``alias`` with ``origin`` counts for; None: not reported."""
    first = origin.split(" + ", 1)[0]
    if alias in _ACL_TABLES:
        if m := _RULE.match(first):
            return RuleOrigin(m["ns"], m["policy"], m["dir"], int(m["idx"]), "allow")
        if m := _OPEN.match(first):
            return RuleOrigin(m["ns"], NOT_ISOLATED, m["dir"], -1, "allow")
        return None
    if alias in _FRONTEND_TABLES and (m := _SERVICE.match(first)):
        return ServiceOrigin(m["ns"], m["svc"], m["port"])
    return None


@dataclass(frozen=True, slots=True)
class RuleCount:
    namespace: str
    policy: str
    direction: str
    index: int
    verdict: str
    packets: int
    bytes: int


@dataclass(frozen=True, slots=True)
class ServiceCount:
    namespace: str
    service: str
    port: str
    packets: int
    bytes: int


@dataclass(frozen=True, slots=True)
class DropCount:
    table: str
    reason: str
    packets: int
    bytes: int


@dataclass(frozen=True, slots=True)
class CounterReport:
    """A node's counter totals as published in ``xpunet-status`` (``xpunetctl counters`` reads it)."""

    node: str
    target: str
    polls: int = 0  # successful reads since the datapath started
    updated_at: float = 0.0  # unix time of the last successful read
    last_error: str = ""  # the last failed read (kept until a read succeeds)
    rules: tuple[RuleCount, ...] = ()
    services: tuple[ServiceCount, ...] = ()
    drops: tuple[DropCount, ...] = ()  # by default action / drop reason
    drops_supported: bool = True  # false: the target does not count drops


register(COUNTERS_SCHEMA, CounterReport)

Count = tuple[int, int]  # (packets, bytes)
K = TypeVar("K")


def _delta(now: Count, before: Count | None) -> Count:
    if before is None or now[0] < before[0] or now[1] < before[1]:
        return now  # new, or restarted from zero (entry replaced, target restarted)
    return now[0] - before[0], now[1] - before[1]


def _add(totals: dict[K, list[int]], key: K, d: Count) -> None:
    cell = totals.get(key)
    if cell is None:
        totals[key] = [d[0], d[1]]
    else:
        cell[0] += d[0]
        cell[1] += d[1]


class CounterTotals:
    """Per-origin running totals, fed one read of the target at a time (:meth:`fold`)."""

    def __init__(self) -> None:
        self._last: dict[EntryKey, Count] = {}
        self._last_drops: dict[str, Count] = {}
        self.origins: dict[Origin, list[int]] = {}  # origin → [packets, bytes]
        self.drops: dict[str, list[int]] = {}  # drop reason → [packets, bytes]
        self.polls = 0

    def fold(
        self,
        counters: Mapping[EntryKey, Count],
        origin_of: Callable[[EntryKey], tuple[str, str] | None],
        drops: Mapping[str, Count] | None = None,
    ) -> None:
        """Add what the counters moved since the last read.

        ``origin_of(key)``: (table alias, origin) of the desired entry on that key, or None
        (not ours any more: its movement is not attributed).  ``drops``: drop reason →
        count, or None when the target does not count drops."""
        for key, now in counters.items():
            d = _delta(now, self._last.get(key))
            if d == (0, 0):
                continue
            found = origin_of(key)
            if found is None:
                continue
            o = classify(*found)
            if o is not None:
                _add(self.origins, o, d)
        self._last = dict(counters)
        if drops is not None:
            for reason, now in drops.items():
                d = _delta(now, self._last_drops.get(reason))
                if d != (0, 0):
                    _add(self.drops, reason, d)
            self._last_drops = dict(drops)
        self.polls += 1

    @property
    def tracking(self) -> bool:
        """Whether a read left entry counters to compare the next one with."""
        return bool(self._last)

    def forget(self, keys: Iterable[EntryKey]) -> None:
        """These entries were deleted from the target: a later entry on the key counts from zero.

        (Without this, an entry re-added and counting up to its predecessor's last value
        would look unchanged.  What a deleted entry counted after the last read is lost.)"""
        last = self._last
        for k in keys:
            last.pop(k, None)

    # ------------------------------------------------------------- views

    def rules(self) -> list[RuleCount]:
        """Every rule origin, plus the ACL default denies (namespace "", policy DEFAULT_DENY)."""
        out = [
            RuleCount(o.namespace, o.policy, o.direction, o.index, o.verdict, c[0], c[1])
            for o, c in self.origins.items()
            if isinstance(o, RuleOrigin)
        ]
        for direction in ("egress", "ingress"):
            c = self.drops.get(f"policy_{direction}")
            if c is not None:
                out.append(RuleCount("", DEFAULT_DENY, direction, -1, "deny", c[0], c[1]))
        out.sort(key=lambda r: (r.namespace, r.policy, r.direction, r.index))
        return out

    def services(self) -> list[ServiceCount]:
        out = [
            ServiceCount(o.namespace, o.service, o.port, c[0], c[1])
            for o, c in self.origins.items()
            if isinstance(o, ServiceOrigin)
        ]
        out.sort(key=lambda s: (s.namespace, s.service, s.port))
        return out

    def drop_counts(self) -> list[DropCount]:
        return [DropCount(DROP_TABLES.get(r, "other"), r, c[0], c[1]) for r, c in sorted(self.drops.items())]

    def policy_metric(self) -> dict[tuple[str, str, str, str], Count]:
        """(namespace, policy, direction, verdict) → totals: the rules of a policy summed."""
        out: dict[tuple[str, str, str, str], Count] = {}
        for r in self.rules():
            k = (r.namespace, r.policy, r.direction, r.verdict)
            p, b = out.get(k, (0, 0))
            out[k] = (p + r.packets, b + r.bytes)
        return out

    def service_metric(self) -> dict[tuple[str, str, str], Count]:
        return {(s.namespace, s.service, s.port): (s.packets, s.bytes) for s in self.services()}

    def drop_metric(self) -> dict[tuple[str, str], Count]:
        """(table, reason) → totals."""
        return {(d.table, d.reason): (d.packets, d.bytes) for d in self.drop_counts()}

    def report(
        self, node: str, target: str, *, updated_at: float, last_error: str = "", drops_supported: bool = True
    ) -> CounterReport:
        return CounterReport(
            node=node,
            target=target,
            polls=self.polls,
            updated_at=updated_at,
            last_error=last_error,
            rules=tuple(self.rules()),
            services=tuple(self.services()),
            drops=tuple(self.drop_counts()),
            drops_supported=drops_supported,
        )


def drops_from_kernel(named: Mapping[str, Count]) -> dict[str, Count]:
    """The kernel target's static counters (``drop_<reason>``, ``deny_<direction>``) → drop reason → count."""
    out: dict[str, Count] = {}
    for name, (p, b) in named.items():
        if name.startswith("drop_"):
            reason = name[len("drop_") :]
        elif name.startswith("deny_"):
            reason = "policy_" + name[len("deny_") :]  # the ACL chains' default: no rule accepted
        else:
            continue
        p0, b0 = out.get(reason, (0, 0))
        out[reason] = (p0 + p, b0 + b)
    return out
