"""rangekv.raft values <-> rangekv.v1.raft wire messages: exact round trips."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rangekv.raft import (
    ConfState,
    Entry,
    EntryType,
    Message,
    MessageType,
    Snapshot,
    SnapshotMetadata,
)
from rangekv.replication.raft_codec import (
    conf_state_from_proto,
    conf_state_to_proto,
    entries_from_proto,
    entries_to_proto,
    message_from_proto,
    message_to_proto,
    messages_from_proto,
    snapshot_metadata_from_proto,
    snapshot_metadata_to_proto,
)
from rangekv.v1 import raft_pb2, types_pb2

U64 = st.integers(min_value=0, max_value=2**64 - 1)
WIRE_TYPES = [t for t in MessageType if not t.is_local()]

entries = st.builds(
    Entry,
    term=U64,
    index=U64,
    type=st.sampled_from(list(EntryType)),
    data=st.binary(max_size=64),
)
conf_states = st.builds(
    lambda v, learners: ConfState(tuple(sorted(v)), tuple(sorted(learners))),
    st.lists(U64, max_size=5),
    st.lists(U64, max_size=3),
)
snapshots = st.builds(lambda i, t, cs: Snapshot(SnapshotMetadata(i, t, cs)), U64, U64, conf_states)
messages = st.builds(
    Message,
    type=st.sampled_from(list(MessageType)),
    to=U64,
    sender=U64,
    term=U64,
    log_term=U64,
    index=U64,
    entries=st.lists(entries, max_size=6).map(tuple),
    commit=U64,
    snapshot=st.none() | snapshots,
    reject=st.booleans(),
    reject_hint=U64,
    context=st.binary(max_size=32),
    round=U64,
)
descriptors = st.none() | st.builds(
    lambda rid, s, e, gen: types_pb2.RangeDescriptor(
        range_id=rid, start_key=s, end_key=e, generation=gen, next_replica_id=4
    ),
    U64,
    st.binary(max_size=8),
    st.binary(max_size=8),
    U64,
)


@settings(max_examples=300, deadline=None)
@given(group_id=U64, msg=messages, descriptor=descriptors)
def test_message_round_trip(
    group_id: int, msg: Message, descriptor: types_pb2.RangeDescriptor | None
) -> None:
    pb = message_to_proto(group_id, msg, descriptor)
    # Through bytes too: what a peer decodes is what was serialized.
    wire = raft_pb2.RaftMessage.FromString(pb.SerializeToString())
    got_group, got_msg, got_desc = message_from_proto(wire)
    assert got_group == group_id
    assert got_msg == msg
    assert got_desc == descriptor


@given(es=st.lists(entries, max_size=20))
def test_entries_round_trip(es: list[Entry]) -> None:
    holder = raft_pb2.RaftMessage(entries=entries_to_proto(es))
    assert entries_from_proto(holder.entries) == tuple(es)


@given(md=snapshots)
def test_snapshot_metadata_round_trip(md: Snapshot) -> None:
    assert snapshot_metadata_from_proto(snapshot_metadata_to_proto(md.metadata)) == md.metadata


def test_conf_state_is_sorted_on_decode() -> None:
    pb = raft_pb2.RaftConfState(voters=[3, 1, 2], learners=[9, 7])
    assert conf_state_from_proto(pb) == ConfState((1, 2, 3), (7, 9))
    assert conf_state_from_proto(conf_state_to_proto(ConfState((1, 2), (5,)))) == ConfState(
        (1, 2), (5,)
    )


def test_snapshot_data_does_not_travel_in_the_message() -> None:
    """The bytes go through SendSnapshot; the message carries metadata only."""
    md = SnapshotMetadata(10, 3, ConfState((1, 2, 3)))
    msg = Message(MessageType.SNAP, to=2, sender=1, term=3, snapshot=Snapshot(md, b"x" * 100))
    pb = message_to_proto(7, msg)
    assert pb.HasField("snapshot") and pb.snapshot.index == 10
    _, got, _ = message_from_proto(pb)
    assert got.snapshot == Snapshot(md, b"")


def test_empty_snapshot_keeps_its_presence() -> None:
    msg = Message(MessageType.SNAP, to=2, sender=1, snapshot=Snapshot())
    _, got, _ = message_from_proto(message_to_proto(1, msg))
    assert got.snapshot == Snapshot()
    _, none, _ = message_from_proto(message_to_proto(1, Message(MessageType.APP, 2, 1)))
    assert none.snapshot is None


def test_wire_numbers_are_the_contract() -> None:
    """Entry types shift by one on the wire (0 is UNSPECIFIED); message types do not."""
    pb = message_to_proto(
        1,
        Message(
            MessageType.APP,
            2,
            1,
            entries=(Entry(1, 1, EntryType.NORMAL), Entry(1, 2, EntryType.CONF_CHANGE)),
        ),
    )
    assert pb.type == MessageType.APP.value
    assert [e.type for e in pb.entries] == [
        raft_pb2.RAFT_ENTRY_TYPE_NORMAL,
        raft_pb2.RAFT_ENTRY_TYPE_CONF_CHANGE,
    ]
    # A sender that never set the entry type means NORMAL.
    unset = raft_pb2.RaftMessage(type=3, entries=[raft_pb2.RaftEntry(term=1, index=1)])
    assert message_from_proto(unset)[1].entries[0].type is EntryType.NORMAL


def test_unknown_types_are_rejected() -> None:
    with pytest.raises(ValueError):
        message_from_proto(raft_pb2.RaftMessage(type=len(MessageType) + 5))
    bad_entry = raft_pb2.RaftEntry.FromString(b"\x18\x07")  # field 3 (type) = 7
    assert bad_entry.type == 7
    with pytest.raises(ValueError):
        message_from_proto(raft_pb2.RaftMessage(type=3, entries=[bad_entry]))


def test_batch_decode_keeps_order() -> None:
    msgs = [Message(WIRE_TYPES[i % len(WIRE_TYPES)], 2, 1, index=i) for i in range(50)]
    pbs = [message_to_proto(i, m) for i, m in enumerate(msgs)]
    decoded = messages_from_proto(pbs)
    assert [(g, m) for g, m, _ in decoded] == list(enumerate(msgs))
