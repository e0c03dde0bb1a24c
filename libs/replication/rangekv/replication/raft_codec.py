"""Conversion between `rangekv.raft` values and the `rangekv.v1.raft` wire messages.

This sits on the replication hot path: every APP, heartbeat and response of
every group crosses it twice (encode on the sender, decode on the receiver).
The protobuf runtime (upb) charges per Python call and per attribute access,
so the functions below:

- build each message with ONE constructor call holding every scalar field
  (cheaper than assigning fields one by one), and leave out empty repeated
  fields and absent sub-messages, which cost a call each even when empty;
- build repeated entries as one list of constructed `RaftEntry` handed to the
  constructor (one extend inside upb instead of one `add()` per entry);
- map enums through tuples indexed by number instead of `Enum(value)` calls,
  and never key a dict by an enum member here: `Enum.__hash__` is a Python
  function, i.e. one interpreted call per lookup. `_value_` (the documented
  member attribute behind the `value` property) and `is` tests are used instead.

The snapshot *data* never travels in a `RaftMessage`: a SNAP message carries
only the metadata, and the bytes stream through `SendSnapshot` chunks. So a
decoded SNAP message has `snapshot.data == b""`; the receiver gets the bytes
separately.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Final

from rangekv.raft import (
    ConfState,
    Entry,
    EntryType,
    Message,
    MessageType,
    Snapshot,
    SnapshotMetadata,
)
from rangekv.v1 import raft_pb2, types_pb2

__all__ = [
    "DecodedMessage",
    "conf_state_from_proto",
    "conf_state_to_proto",
    "entries_from_proto",
    "entries_to_proto",
    "message_from_proto",
    "message_to_proto",
    "messages_from_proto",
    "snapshot_metadata_from_proto",
    "snapshot_metadata_to_proto",
]

#: What the receiver hands to raft: (group id, message, descriptor or None).
DecodedMessage = tuple[int, Message, types_pb2.RangeDescriptor | None]

_RaftMessage: Final = raft_pb2.RaftMessage
_RaftEntry: Final = raft_pb2.RaftEntry

# The wire enum reserves 0 for UNSPECIFIED, so EntryType.NORMAL (0) travels as
# RAFT_ENTRY_TYPE_NORMAL (1) and CONF_CHANGE (1) as RAFT_ENTRY_TYPE_CONF_CHANGE (2).
# Indexed by wire number; index 0 (UNSPECIFIED, i.e. a sender that never set
# the field) reads as NORMAL, the only sane default for an entry.
_ENTRY_TYPE_FROM_WIRE: Final[tuple[EntryType, ...]] = (
    EntryType.NORMAL,
    EntryType.NORMAL,
    EntryType.CONF_CHANGE,
)
# Indexed by MessageType value. Value numbers are dense from 0 (checked below).
_MESSAGE_TYPES: Final[tuple[MessageType, ...]] = tuple(sorted(MessageType, key=lambda t: t.value))
if any(t.value != i for i, t in enumerate(_MESSAGE_TYPES)):
    raise ImportError("rangekv.raft.MessageType values are not dense from 0")
_N_MESSAGE_TYPES: Final = len(_MESSAGE_TYPES)
_CONF_CHANGE: Final = EntryType.CONF_CHANGE
_WIRE_NORMAL: Final = raft_pb2.RAFT_ENTRY_TYPE_NORMAL
_WIRE_CONF_CHANGE: Final = raft_pb2.RAFT_ENTRY_TYPE_CONF_CHANGE


def entries_to_proto(entries: Iterable[Entry]) -> list[raft_pb2.RaftEntry]:
    """Wire form of `entries`, ready to hand to a repeated field in one go."""
    make = _RaftEntry
    conf, wire_conf, wire_normal = _CONF_CHANGE, _WIRE_CONF_CHANGE, _WIRE_NORMAL
    return [
        make(
            term=e.term,
            index=e.index,
            type=wire_conf if e.type is conf else wire_normal,
            data=e.data,
        )
        for e in entries
    ]


def entries_from_proto(entries: Iterable[raft_pb2.RaftEntry]) -> tuple[Entry, ...]:
    """Raft entries of a wire message; unknown entry types raise ValueError."""
    from_wire = _ENTRY_TYPE_FROM_WIRE
    try:
        return tuple([Entry(e.term, e.index, from_wire[e.type], e.data) for e in entries])
    except IndexError:
        raise ValueError("unknown RaftEntryType on the wire") from None


def conf_state_to_proto(cs: ConfState) -> raft_pb2.RaftConfState:
    return raft_pb2.RaftConfState(voters=cs.voters, learners=cs.learners)


def conf_state_from_proto(pb: raft_pb2.RaftConfState) -> ConfState:
    # ConfState promises sorted tuples; a peer's order is not trusted.
    return ConfState(voters=tuple(sorted(pb.voters)), learners=tuple(sorted(pb.learners)))


def snapshot_metadata_to_proto(md: SnapshotMetadata) -> raft_pb2.RaftSnapshotMetadata:
    return raft_pb2.RaftSnapshotMetadata(
        index=md.index, term=md.term, conf_state=conf_state_to_proto(md.conf_state)
    )


def snapshot_metadata_from_proto(pb: raft_pb2.RaftSnapshotMetadata) -> SnapshotMetadata:
    return SnapshotMetadata(
        index=pb.index, term=pb.term, conf_state=conf_state_from_proto(pb.conf_state)
    )


def message_to_proto(
    group_id: int,
    msg: Message,
    descriptor: types_pb2.RangeDescriptor | None = None,
) -> raft_pb2.RaftMessage:
    """Wire form of `msg` addressed to raft group `group_id`.

    `msg.snapshot.data` is deliberately not encoded (see the module docstring);
    `descriptor` is copied into the message when given.
    """
    # The entries go in through the constructor (one copy), and only when there
    # are some: most messages (heartbeats, responses) carry none.
    pb = _RaftMessage(
        group_id=group_id,
        type=msg.type._value_,
        to_replica_id=msg.to,
        from_replica_id=msg.sender,
        term=msg.term,
        log_term=msg.log_term,
        index=msg.index,
        commit=msg.commit,
        reject=msg.reject,
        reject_hint=msg.reject_hint,
        context=msg.context,
        round=msg.round,
        entries=entries_to_proto(msg.entries) if msg.entries else None,
    )
    snap = msg.snapshot
    if snap is not None:
        # Presence matters (a SNAP message always has one), so set it even when
        # the metadata is all zeros.
        pb.snapshot.CopyFrom(snapshot_metadata_to_proto(snap.metadata))
    if descriptor is not None:
        pb.descriptor.CopyFrom(descriptor)
    return pb


def message_from_proto(pb: raft_pb2.RaftMessage) -> DecodedMessage:
    """Decode one wire message into (group id, raft message, descriptor or None).

    Raises ValueError on a message type or entry type this build does not know
    (a newer peer), so the caller can drop that one message and keep the batch.
    """
    t = pb.type
    if t >= _N_MESSAGE_TYPES:
        raise ValueError(f"unknown raft message type {t} on the wire")
    snapshot = (
        Snapshot(metadata=snapshot_metadata_from_proto(pb.snapshot))
        if pb.HasField("snapshot")
        else None
    )
    wire_entries = pb.entries
    # Positional, in the field order OVERVIEW.md fixes for Message: a frozen
    # dataclass binds positional arguments markedly faster than keywords. The
    # round-trip tests catch any drift in that order.
    msg = Message(
        _MESSAGE_TYPES[t],
        pb.to_replica_id,
        pb.from_replica_id,
        pb.term,
        pb.log_term,
        pb.index,
        entries_from_proto(wire_entries) if wire_entries else (),
        pb.commit,
        snapshot,
        pb.reject,
        pb.reject_hint,
        pb.context,
        pb.round,
    )
    descriptor = pb.descriptor if pb.HasField("descriptor") else None
    return pb.group_id, msg, descriptor


def messages_from_proto(pbs: Sequence[raft_pb2.RaftMessage]) -> list[DecodedMessage]:
    """Decode a batch, raising ValueError on the first undecodable message."""
    decode = message_from_proto
    return [decode(pb) for pb in pbs]
