"""softipu Write semantics per the P4Runtime spec, one error code at a time, over real gRPC."""

from __future__ import annotations

from collections.abc import Callable

import grpc
import pytest
from p4.v1 import p4runtime_pb2, p4runtime_pb2_grpc

from xpunet.datapath.softipu.server import SoftIpu
from xpunet.p4rt.client import P4RuntimeClient
from xpunet.p4rt.errors import PermanentTargetError, RetryableTargetError
from xpunet.p4rt.testing import (
    ACL_TABLE,
    BACKENDS_PROFILE,
    DROP,
    FORWARD,
    LPM_TABLE,
    NO_ACTION,
    SERVICE_TABLE,
    SET_BACKEND,
    TINY_TABLE,
    acl_entry,
    action,
    entity_update,
    lpm_entry,
    updates,
)

INSERT = p4runtime_pb2.Update.INSERT
MODIFY = p4runtime_pb2.Update.MODIFY
DELETE = p4runtime_pb2.Update.DELETE
Entry = p4runtime_pb2.TableEntry


def _acl(**overrides: int | None) -> Entry:
    args: dict[str, int | None] = {"src": 0x0A000000, "mask": 0xFF000000, "low": 80, "high": 443}
    args |= {"proto": 6, "vrf": 1, "priority": 10}
    args |= overrides
    return acl_entry(**args)  # type: ignore[arg-type]  # test table of ints


def _mutated(entry: Entry, change: Callable[[Entry], None]) -> Entry:
    copy = Entry()
    copy.CopyFrom(entry)
    change(copy)
    return copy


def _tiny(key: int) -> Entry:
    entry = Entry(table_id=TINY_TABLE)
    entry.match.add(field_id=1).exact.value = bytes([key])
    entry.action.action.action_id = DROP
    return entry


def _set(attr: str, value: object) -> Callable[[Entry], None]:
    return lambda e: setattr(e, attr, value)


BASE = lpm_entry(0x0A000000, 8)

INVALID_ENTRIES = [
    pytest.param(_mutated(BASE, _set("table_id", 0x02000099)), id="unknown-table"),
    pytest.param(_mutated(BASE, lambda e: setattr(e.match[0], "field_id", 9)), id="unknown-field"),
    pytest.param(
        _mutated(BASE, lambda e: setattr(e.match[0].lpm, "value", b"\x01\x00\x00\x00\x00")), id="too-wide"
    ),
    pytest.param(_mutated(BASE, lambda e: setattr(e.match[0].lpm, "value", b"")), id="empty-bytestring"),
    pytest.param(lpm_entry(0x0A000001, 8), id="lpm-bits-beyond-prefix"),
    pytest.param(lpm_entry(0, 0), id="lpm-prefix-0-must-be-omitted"),
    pytest.param(lpm_entry(0x0A000000, 33), id="lpm-prefix-too-long"),
    pytest.param(_mutated(BASE, _set("priority", 5)), id="priority-on-lpm-table"),
    pytest.param(_acl(priority=0), id="no-priority-on-ternary-table"),
    pytest.param(_acl(mask=0, src=0), id="ternary-mask-0-must-be-omitted"),
    pytest.param(_acl(src=0x0A000001, mask=0xFF000000), id="ternary-value-outside-mask"),
    pytest.param(_acl(low=0, high=0xFFFF), id="full-range-must-be-omitted"),
    pytest.param(_acl(low=9, high=3), id="range-low-above-high"),
    pytest.param(_acl(vrf=0x1000), id="exact-12-bit-overflow"),
    pytest.param(_mutated(_acl(), lambda e: e.ClearField("match")), id="exact-field-missing"),
    pytest.param(_mutated(BASE, lambda e: e.match.append(e.match[0])), id="field-repeated"),
    pytest.param(
        _mutated(BASE, lambda e: setattr(e.action.action, "action_id", SET_BACKEND)), id="action-not-in-table"
    ),
    pytest.param(
        _mutated(BASE, lambda e: setattr(e.action.action, "action_id", 0x01000099)), id="unknown-action"
    ),
    pytest.param(
        _mutated(BASE, lambda e: e.action.action.CopyFrom(action(NO_ACTION))), id="default-only-action"
    ),
    pytest.param(_mutated(BASE, lambda e: e.action.action.CopyFrom(action(FORWARD, 1))), id="missing-param"),
    pytest.param(
        _mutated(BASE, lambda e: e.action.action.CopyFrom(action(FORWARD, 512, 1))), id="param-too-wide"
    ),
    pytest.param(
        _mutated(BASE, lambda e: setattr(e.action.action.params[0], "param_id", 7)), id="unknown-param"
    ),
    pytest.param(_mutated(BASE, lambda e: e.ClearField("action")), id="no-action"),
    pytest.param(
        _mutated(BASE, lambda e: e.action.CopyFrom(p4runtime_pb2.TableAction(action_profile_member_id=1))),
        id="member-on-direct-table",
    ),
]


@pytest.mark.parametrize("entry", INVALID_ENTRIES)
async def test_invalid_entry_is_invalid_argument(primary: P4RuntimeClient, entry: Entry) -> None:
    with pytest.raises(PermanentTargetError) as info:
        await primary.write(updates(INSERT, [entry]))
    assert [(u.index, u.code) for u in info.value.updates] == [(0, "INVALID_ARGUMENT")], info.value
    assert await primary.read_table_entries() == []


async def test_insert_existing_is_already_exists(primary: P4RuntimeClient) -> None:
    await primary.write(updates(INSERT, [BASE]))
    with pytest.raises(PermanentTargetError) as info:
        await primary.write(updates(INSERT, [lpm_entry(0x0A000000, 8, port=7)]))
    assert info.value.updates[0].code == "ALREADY_EXISTS"


@pytest.mark.parametrize("kind", [MODIFY, DELETE], ids=["modify", "delete"])
async def test_modify_or_delete_missing_is_not_found(primary: P4RuntimeClient, kind: int) -> None:
    with pytest.raises(PermanentTargetError) as info:
        await primary.write(updates(kind, [BASE]))  # type: ignore[arg-type]  # an Update.Type
    assert info.value.updates[0].code == "NOT_FOUND"


async def test_modify_replaces_the_action(primary: P4RuntimeClient) -> None:
    await primary.write(updates(INSERT, [BASE]))
    await primary.write(updates(MODIFY, [lpm_entry(0x0A000000, 8, port=7)]))
    [entry] = await primary.read_table_entries(LPM_TABLE)
    assert entry.action.action.params[0].value == b"\x07"


async def test_table_full_is_resource_exhausted(primary: P4RuntimeClient) -> None:
    with pytest.raises(RetryableTargetError) as info:
        await primary.write(updates(INSERT, [_tiny(1), _tiny(2), _tiny(3)]))
    assert [(u.index, u.code) for u in info.value.updates] == [(2, "RESOURCE_EXHAUSTED")]


async def test_padded_bytestrings_are_accepted_and_read_back_canonical(primary: P4RuntimeClient) -> None:
    padded = _mutated(BASE, lambda e: setattr(e.match[0].lpm, "value", b"\x0a\x00\x00\x00"))
    padded.action.action.params[0].value = b"\x00\x01"
    await primary.write(updates(INSERT, [padded]))
    with pytest.raises(PermanentTargetError):
        await primary.write(updates(INSERT, [BASE]))  # same entry, canonical spelling
    [entry] = await primary.read_table_entries(LPM_TABLE)
    assert entry.match[0].lpm.value == b"\x0a\x00\x00\x00"
    assert entry.action.action.params[0].value == b"\x01"


async def test_strict_mode_rejects_padded_bytestrings(
    primary: P4RuntimeClient, softipu_server: SoftIpu
) -> None:
    assert softipu_server.state is not None
    softipu_server.state.strict = True
    padded = lpm_entry(0x0A000000, 8)
    padded.action.action.params[0].value = b"\x00\x01"
    with pytest.raises(PermanentTargetError) as info:
        await primary.write(updates(INSERT, [padded]))
    assert "non-canonical" in info.value.updates[0].message


async def test_continue_on_error_applies_the_rest(primary: P4RuntimeClient) -> None:
    await primary.write(updates(INSERT, [BASE]))
    batch = updates(INSERT, [lpm_entry(0x0B000000, 8), BASE, lpm_entry(0x0C000000, 8)])
    batch += updates(DELETE, [lpm_entry(0x0D000000, 8)])
    batch += updates(MODIFY, [lpm_entry(0x0B000000, 8, port=3)])
    with pytest.raises(PermanentTargetError) as info:
        await primary.write(batch)
    assert [(u.index, u.code) for u in info.value.updates] == [(1, "ALREADY_EXISTS"), (3, "NOT_FOUND")]
    entries = await primary.read_table_entries(LPM_TABLE)
    assert len(entries) == 3


async def test_rollback_on_error_applies_nothing(primary: P4RuntimeClient) -> None:
    await primary.write(updates(INSERT, [BASE]))
    batch = (
        updates(INSERT, [lpm_entry(0x0B000000, 8)]) + updates(DELETE, [BASE]) + updates(INSERT, [BASE, BASE])
    )
    with pytest.raises(PermanentTargetError) as info:
        await primary.write(batch, atomicity=p4runtime_pb2.WriteRequest.ROLLBACK_ON_ERROR)
    codes = [(u.index, u.code) for u in info.value.updates]
    assert codes == [(0, "ABORTED"), (1, "ABORTED"), (2, "ABORTED"), (3, "ALREADY_EXISTS")]
    [entry] = await primary.read_table_entries(LPM_TABLE)
    assert entry == BASE


async def test_default_entry_modify_read_and_reset(primary: P4RuntimeClient) -> None:
    default = await primary.read_default_entry(LPM_TABLE)
    assert default.action.action.action_id == NO_ACTION
    change = Entry(table_id=LPM_TABLE, is_default_action=True)
    change.action.action.CopyFrom(action(DROP))
    await primary.write(updates(MODIFY, [change]))
    assert (await primary.read_default_entry(LPM_TABLE)).action.action.action_id == DROP
    await primary.write(updates(MODIFY, [Entry(table_id=LPM_TABLE, is_default_action=True)]))
    assert (await primary.read_default_entry(LPM_TABLE)).action.action.action_id == NO_ACTION
    with pytest.raises(PermanentTargetError) as info:
        await primary.write(updates(INSERT, [change]))
    assert info.value.updates[0].code == "INVALID_ARGUMENT"
    const = Entry(table_id=TINY_TABLE, is_default_action=True)
    const.action.action.action_id = DROP
    with pytest.raises(RetryableTargetError) as denied:
        await primary.write(updates(MODIFY, [const]))
    assert denied.value.updates[0].code == "PERMISSION_DENIED"


async def test_direct_counters(primary: P4RuntimeClient, softipu_server: SoftIpu) -> None:
    entry = lpm_entry(0x0A000000, 8)
    entry.counter_data.byte_count = 100
    entry.counter_data.packet_count = 1
    await primary.write(updates(INSERT, [entry, lpm_entry(0x0B000000, 8)]))
    [read] = [
        e for e in await primary.read_table_entries(LPM_TABLE, with_counters=True) if e.match == entry.match
    ]
    assert (read.counter_data.byte_count, read.counter_data.packet_count) == (100, 1)
    # Packet execution feeds the same cell.
    state = softipu_server.state
    assert state is not None
    [key] = [k for k, v in state.tables[LPM_TABLE].entries.items() if v.match == entry.match]
    state.count_hit(LPM_TABLE, key, 60)
    [dce] = await primary.read_direct_counters(entry=entry)
    assert (dce.data.byte_count, dce.data.packet_count) == (160, 2)
    assert len(await primary.read_direct_counters(0)) == 2
    reset = p4runtime_pb2.DirectCounterEntry()
    reset.table_entry.CopyFrom(lpm_entry(0x0A000000, 8))
    reset.table_entry.ClearField("action")
    await primary.write([entity_update(MODIFY, direct_counter_entry=reset)])
    [dce] = await primary.read_direct_counters(entry=entry)
    assert dce.data.packet_count == 0


async def test_indirect_counter_read_and_write(primary: P4RuntimeClient) -> None:
    cell = p4runtime_pb2.CounterEntry(counter_id=0x12000001)
    cell.index.index = 3
    cell.data.packet_count = 9
    await primary.write([entity_update(MODIFY, counter_entry=cell)])
    [read] = await primary.read_counters(0x12000001, 3)
    assert read.data.packet_count == 9
    assert len(await primary.read_counters(0x12000001)) == 16


async def test_action_profile_members_groups_and_references(primary: P4RuntimeClient) -> None:
    members = []
    for mid in (1, 2):
        member = p4runtime_pb2.ActionProfileMember(action_profile_id=BACKENDS_PROFILE, member_id=mid)
        member.action.CopyFrom(action(SET_BACKEND, 0x0A000000 + mid))
        members.append(entity_update(INSERT, action_profile_member=member))
    group = p4runtime_pb2.ActionProfileGroup(action_profile_id=BACKENDS_PROFILE, group_id=7)
    group.members.add(member_id=1, weight=1)
    group.members.add(member_id=2, weight=1)
    entry = Entry(table_id=SERVICE_TABLE)
    entry.match.add(field_id=1).exact.value = b"\x0a\x60\x00\x01"
    entry.match.add(field_id=2).exact.value = b"\x50"
    entry.action.action_profile_group_id = 7
    await primary.write(
        [*members, entity_update(INSERT, action_profile_group=group), *updates(INSERT, [entry])]
    )
    # A member in use by a group cannot go; a group in use by an entry cannot go.
    in_use = [
        entity_update(
            DELETE,
            action_profile_member=p4runtime_pb2.ActionProfileMember(
                action_profile_id=BACKENDS_PROFILE, member_id=1
            ),
        ),
        entity_update(
            DELETE,
            action_profile_group=p4runtime_pb2.ActionProfileGroup(
                action_profile_id=BACKENDS_PROFILE, group_id=7
            ),
        ),
    ]
    with pytest.raises(RetryableTargetError) as info:
        await primary.write(in_use)
    assert [u.code for u in info.value.updates] == ["FAILED_PRECONDITION", "FAILED_PRECONDITION"]
    dangling = _mutated(entry, lambda e: setattr(e.action, "action_profile_group_id", 99))
    dangling.match[1].exact.value = b"\x51"
    with pytest.raises(PermanentTargetError) as missing:
        await primary.write(updates(INSERT, [dangling]))
    assert missing.value.updates[0].code == "NOT_FOUND"
    # Tear down in dependency order succeeds.
    await primary.write([*updates(DELETE, [entry]), in_use[1], in_use[0]])
    query = p4runtime_pb2.Entity()
    query.action_profile_member.action_profile_id = BACKENDS_PROFILE
    assert [e.action_profile_member.member_id async for e in primary.read([query])] == [2]


async def test_read_wildcards(primary: P4RuntimeClient) -> None:
    lpm = [lpm_entry(0x0A000000 + (i << 8), 24) for i in range(1000)]
    acl = [_acl(priority=p) for p in range(1, 1501)]
    await primary.write(updates(INSERT, lpm + acl))
    assert len(await primary.read_table_entries()) == 2500  # table id 0: every table, chunked replies
    assert len(await primary.read_table_entries(ACL_TABLE)) == 1500
    one = p4runtime_pb2.Entity()
    one.table_entry.CopyFrom(acl[1])
    one.table_entry.ClearField("action")
    found = [e.table_entry async for e in primary.read([one])]
    assert [e.priority for e in found] == [2]
    # Several queries in one request.
    two = p4runtime_pb2.Entity()
    two.table_entry.table_id = ACL_TABLE
    assert len([e async for e in primary.read([one, two])]) == 1501


async def test_duplicate_election_id_ends_the_stream_with_invalid_argument(
    primary: P4RuntimeClient, softipu_server: SoftIpu
) -> None:
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{softipu_server.port}")
    try:
        stub = p4runtime_pb2_grpc.P4RuntimeStub(channel)  # type: ignore[no-untyped-call]  # generated, untyped
        call = stub.StreamChannel()
        request = p4runtime_pb2.StreamMessageRequest()
        request.arbitration.device_id = 1
        request.arbitration.election_id.low = primary.election_id  # already the primary's
        await call.write(request)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await call.read()
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    finally:
        await channel.close()
    assert primary.arbitration.role.value == "primary"
