"""A small P4Info and entry builders for tests of P4Runtime peers (client, softipu).

The pipeline covers every match kind (exact, lpm, ternary, range, optional), a
direct counter, an indirect counter, an action profile with a selector, a
default-only action and a tiny table to hit RESOURCE_EXHAUSTED.  It is not
xpunet's pipeline (see xpunet.pipeline); it exists so the P4Runtime layers are
tested against the spec independently of it.
"""

from __future__ import annotations

from collections.abc import Iterable

from p4.config.v1 import p4info_pb2
from p4.v1 import p4runtime_pb2

from xpunet.p4rt.p4info import parse_text
from xpunet.p4rt.schema import encode_uint

TEST_P4INFO_TEXT = """
pkg_info { arch: "pna" name: "xpunet-test" }
tables {
  preamble { id: 0x02000001 name: "ingress.ipv4_lpm" alias: "ipv4_lpm" }
  match_fields { id: 1 name: "hdr.ipv4.dst" bitwidth: 32 match_type: LPM }
  action_refs { id: 0x01000002 }
  action_refs { id: 0x01000001 }
  action_refs { id: 0x01000004 scope: DEFAULT_ONLY }
  initial_default_action { action_id: 0x01000004 }
  direct_resource_ids: 0x13000001
  size: 1024
}
tables {
  preamble { id: 0x02000002 name: "ingress.acl" alias: "acl" }
  match_fields { id: 1 name: "hdr.ipv4.src" bitwidth: 32 match_type: TERNARY }
  match_fields { id: 2 name: "meta.l4_dport" bitwidth: 16 match_type: RANGE }
  match_fields { id: 3 name: "hdr.ipv4.protocol" bitwidth: 8 match_type: OPTIONAL }
  match_fields { id: 4 name: "meta.vrf" bitwidth: 12 match_type: EXACT }
  action_refs { id: 0x01000001 }
  action_refs { id: 0x01000002 }
  action_refs { id: 0x01000004 }
  size: 4096
}
tables {
  preamble { id: 0x02000003 name: "ingress.service" alias: "service" }
  match_fields { id: 1 name: "hdr.ipv4.dst" bitwidth: 32 match_type: EXACT }
  match_fields { id: 2 name: "meta.l4_dport" bitwidth: 16 match_type: EXACT }
  action_refs { id: 0x01000003 }
  implementation_id: 0x11000001
  size: 1024
}
tables {
  preamble { id: 0x02000004 name: "ingress.tiny" alias: "tiny" }
  match_fields { id: 1 name: "meta.key" bitwidth: 8 match_type: EXACT }
  action_refs { id: 0x01000001 }
  const_default_action_id: 0x01000001
  size: 2
}
actions { preamble { id: 0x01000001 name: "ingress.drop" alias: "drop" } }
actions {
  preamble { id: 0x01000002 name: "ingress.forward" alias: "forward" }
  params { id: 1 name: "port" bitwidth: 9 }
  params { id: 2 name: "dmac" bitwidth: 48 }
}
actions {
  preamble { id: 0x01000003 name: "ingress.set_backend" alias: "set_backend" }
  params { id: 1 name: "addr" bitwidth: 32 }
}
actions { preamble { id: 0x01000004 name: "NoAction" alias: "NoAction" } }
action_profiles {
  preamble { id: 0x11000001 name: "ingress.backends" alias: "backends" }
  table_ids: 0x02000003
  with_selector: true
  size: 1024
  max_group_size: 64
}
counters {
  preamble { id: 0x12000001 name: "ingress.port_pkts" alias: "port_pkts" }
  spec { unit: BOTH }
  size: 16
}
direct_counters {
  preamble { id: 0x13000001 name: "ingress.lpm_hits" alias: "lpm_hits" }
  spec { unit: BOTH }
  direct_table_id: 0x02000001
}
"""

LPM_TABLE = 0x02000001
ACL_TABLE = 0x02000002
SERVICE_TABLE = 0x02000003
TINY_TABLE = 0x02000004
DROP = 0x01000001
FORWARD = 0x01000002
SET_BACKEND = 0x01000003
NO_ACTION = 0x01000004
BACKENDS_PROFILE = 0x11000001
PORT_COUNTER = 0x12000001


def sample_p4info() -> p4info_pb2.P4Info:
    return parse_text(TEST_P4INFO_TEXT)


def action(action_id: int, *params: int) -> p4runtime_pb2.Action:
    """A direct action with canonical params, numbered 1..n."""
    out = p4runtime_pb2.Action(action_id=action_id)
    for i, value in enumerate(params, start=1):
        out.params.add(param_id=i, value=encode_uint(value))
    return out


def lpm_entry(
    addr: int, prefix_len: int, port: int = 1, dmac: int = 0x0A0000000001
) -> p4runtime_pb2.TableEntry:
    entry = p4runtime_pb2.TableEntry(table_id=LPM_TABLE)
    fm = entry.match.add(field_id=1)
    fm.lpm.value = encode_uint(addr)
    fm.lpm.prefix_len = prefix_len
    entry.action.action.CopyFrom(action(FORWARD, port, dmac))
    return entry


def acl_entry(
    *, src: int, mask: int, low: int, high: int, proto: int | None, vrf: int, priority: int
) -> p4runtime_pb2.TableEntry:
    entry = p4runtime_pb2.TableEntry(table_id=ACL_TABLE, priority=priority)
    fm = entry.match.add(field_id=1)
    fm.ternary.value = encode_uint(src)
    fm.ternary.mask = encode_uint(mask)
    fm = entry.match.add(field_id=2)
    fm.range.low = encode_uint(low)
    fm.range.high = encode_uint(high)
    if proto is not None:
        entry.match.add(field_id=3).optional.value = encode_uint(proto)
    entry.match.add(field_id=4).exact.value = encode_uint(vrf)
    entry.action.action.CopyFrom(action(DROP))
    return entry


def updates(
    kind: p4runtime_pb2.Update.Type, entries: Iterable[p4runtime_pb2.TableEntry]
) -> list[p4runtime_pb2.Update]:
    out = []
    for entry in entries:
        update = p4runtime_pb2.Update(type=kind)
        update.entity.table_entry.CopyFrom(entry)
        out.append(update)
    return out


def entity_update(kind: p4runtime_pb2.Update.Type, **entity: object) -> p4runtime_pb2.Update:
    """An update of any entity: ``entity_update(INSERT, action_profile_member=member)``."""
    update = p4runtime_pb2.Update(type=kind)
    for name, message in entity.items():
        getattr(update.entity, name).CopyFrom(message)
    return update
