"""Client arbitration of the P4Runtime StreamChannel (primary / backup per role).

Spec semantics: for each role the server remembers the highest election id it
has ever granted (``past``).  A client becomes primary when it arbitrates with
an election id >= ``past``; a backup never takes over by itself when the
primary leaves (it must arbitrate again with a high enough id).  Every
arbitration reply and notification carries ``past`` as the election id and a
status: OK for the primary, ALREADY_EXISTS for a backup while a primary is
connected, NOT_FOUND when there is none.  Election ids are unique among the
connected clients of a role (a duplicate ends the stream with
INVALID_ARGUMENT).  When the primary changes or leaves, every client of the role
is notified.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

from google.rpc import code_pb2
from p4.v1 import p4runtime_pb2

from xpunet.datapath.softipu.entries import EntityError

log = logging.getLogger(__name__)


def election_id_of(uint128: p4runtime_pb2.Uint128) -> int:
    return (uint128.high << 64) | uint128.low


@dataclass(eq=False, slots=True)
class Session:
    """One open StreamChannel."""

    peer: str
    # Replies to send; None ends the stream, an EntityError ends it with that status.
    outbox: asyncio.Queue[p4runtime_pb2.StreamMessageResponse | EntityError | None] = field(
        default_factory=asyncio.Queue
    )
    arbitrated: bool = False
    device_id: int = 0
    role: str = ""
    election_id: int | None = None  # None: the client sent no election id (always a backup)


class Arbiter:
    """Arbitration state of one device."""

    def __init__(self, device_id: int) -> None:
        self.device_id = device_id
        self.sessions: list[Session] = []
        self.past: dict[str, int] = {}

    def primary(self, role: str) -> Session | None:
        past = self.past.get(role)
        if past is None:
            return None
        for s in self.sessions:
            if s.arbitrated and s.role == role and s.election_id == past:
                return s
        return None

    def allows(self, role: str, election_id: int) -> bool:
        """A Write/SetForwardingPipelineConfig with this id is from the connected primary."""
        primary = self.primary(role)
        return primary is not None and primary.election_id == election_id

    def open(self, session: Session) -> None:
        self.sessions.append(session)

    def arbitrate(self, session: Session, update: p4runtime_pb2.MasterArbitrationUpdate) -> None:
        """Apply a client's MasterArbitrationUpdate; raises EntityError to end its stream."""
        if update.device_id != self.device_id:
            raise EntityError(code_pb2.NOT_FOUND, f"device id {update.device_id} is not this device")
        if session.arbitrated and update.device_id != session.device_id:
            raise EntityError(code_pb2.FAILED_PRECONDITION, "device id changed on an open stream")
        role = update.role.name if update.HasField("role") else ""
        if update.HasField("role") and update.role.id:
            raise EntityError(code_pb2.INVALID_ARGUMENT, "role ids are deprecated: use role names")
        eid = election_id_of(update.election_id) if update.HasField("election_id") else None
        if eid is not None:
            for other in self.sessions:
                if (
                    other is not session
                    and other.arbitrated
                    and other.role == role
                    and other.election_id == eid
                ):
                    raise EntityError(code_pb2.INVALID_ARGUMENT, f"election id {eid} is already in use")
        old_roles = {session.role} if session.arbitrated else set()
        before = {r: self.primary(r) for r in old_roles | {role}}
        session.arbitrated = True
        session.device_id = update.device_id
        session.role = role
        session.election_id = eid
        past = self.past.get(role)
        became_primary = eid is not None and (past is None or eid >= past)
        if became_primary:
            assert eid is not None
            self.past[role] = eid
        log.info(
            "arbitration from %s: role=%r election_id=%s -> %s",
            session.peer,
            role,
            eid,
            "primary" if became_primary else "backup",
        )
        for r, old_primary in before.items():
            if self.primary(r) is not old_primary or (became_primary and r == role):
                # A change of primary (or a primary re-asserting itself): tell the whole role.
                self._notify_role(r)
            elif r == role:
                self._notify(session)

    def close(self, session: Session) -> None:
        if session not in self.sessions:
            return
        was_primary = session.arbitrated and self.primary(session.role) is session
        self.sessions.remove(session)
        if was_primary:
            log.info("primary %s of role %r left; the role has no primary", session.peer, session.role)
            self._notify_role(session.role)

    def _notify_role(self, role: str) -> None:
        for s in self.sessions:
            if s.arbitrated and s.role == role:
                self._notify(s)

    def _notify(self, session: Session) -> None:
        primary = self.primary(session.role)
        msg = p4runtime_pb2.StreamMessageResponse()
        arb = msg.arbitration
        arb.device_id = self.device_id
        if session.role:
            arb.role.name = session.role
        past = self.past.get(session.role)
        if past is not None:
            arb.election_id.high = past >> 64
            arb.election_id.low = past & ((1 << 64) - 1)
        if primary is session:
            arb.status.code = code_pb2.OK
            arb.status.message = "primary"
        elif primary is not None:
            arb.status.code = code_pb2.ALREADY_EXISTS
            arb.status.message = "backup: another client is primary"
        else:
            arb.status.code = code_pb2.NOT_FOUND
            arb.status.message = "backup: no primary"
        session.outbox.put_nowait(msg)
