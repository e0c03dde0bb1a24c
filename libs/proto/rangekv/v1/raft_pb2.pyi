from rangekv.v1 import types_pb2 as _types_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RaftLane(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    RAFT_LANE_UNSPECIFIED: _ClassVar[RaftLane]
    RAFT_LANE_HEARTBEAT: _ClassVar[RaftLane]
    RAFT_LANE_REPLICATION: _ClassVar[RaftLane]
    RAFT_LANE_SNAPSHOT: _ClassVar[RaftLane]
    RAFT_LANE_OTHER: _ClassVar[RaftLane]

class RaftEntryType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    RAFT_ENTRY_TYPE_UNSPECIFIED: _ClassVar[RaftEntryType]
    RAFT_ENTRY_TYPE_NORMAL: _ClassVar[RaftEntryType]
    RAFT_ENTRY_TYPE_CONF_CHANGE: _ClassVar[RaftEntryType]
RAFT_LANE_UNSPECIFIED: RaftLane
RAFT_LANE_HEARTBEAT: RaftLane
RAFT_LANE_REPLICATION: RaftLane
RAFT_LANE_SNAPSHOT: RaftLane
RAFT_LANE_OTHER: RaftLane
RAFT_ENTRY_TYPE_UNSPECIFIED: RaftEntryType
RAFT_ENTRY_TYPE_NORMAL: RaftEntryType
RAFT_ENTRY_TYPE_CONF_CHANGE: RaftEntryType

class RaftEntry(_message.Message):
    __slots__ = ("term", "index", "type", "data")
    TERM_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    term: int
    index: int
    type: RaftEntryType
    data: bytes
    def __init__(self, term: _Optional[int] = ..., index: _Optional[int] = ..., type: _Optional[_Union[RaftEntryType, str]] = ..., data: _Optional[bytes] = ...) -> None: ...

class RaftConfState(_message.Message):
    __slots__ = ("voters", "learners")
    VOTERS_FIELD_NUMBER: _ClassVar[int]
    LEARNERS_FIELD_NUMBER: _ClassVar[int]
    voters: _containers.RepeatedScalarFieldContainer[int]
    learners: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, voters: _Optional[_Iterable[int]] = ..., learners: _Optional[_Iterable[int]] = ...) -> None: ...

class RaftSnapshotMetadata(_message.Message):
    __slots__ = ("index", "term", "conf_state")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    TERM_FIELD_NUMBER: _ClassVar[int]
    CONF_STATE_FIELD_NUMBER: _ClassVar[int]
    index: int
    term: int
    conf_state: RaftConfState
    def __init__(self, index: _Optional[int] = ..., term: _Optional[int] = ..., conf_state: _Optional[_Union[RaftConfState, _Mapping]] = ...) -> None: ...

class RaftMessage(_message.Message):
    __slots__ = ("group_id", "type", "to_replica_id", "from_replica_id", "term", "log_term", "index", "entries", "commit", "reject", "reject_hint", "context", "round", "snapshot", "descriptor")
    GROUP_ID_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    TO_REPLICA_ID_FIELD_NUMBER: _ClassVar[int]
    FROM_REPLICA_ID_FIELD_NUMBER: _ClassVar[int]
    TERM_FIELD_NUMBER: _ClassVar[int]
    LOG_TERM_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    COMMIT_FIELD_NUMBER: _ClassVar[int]
    REJECT_FIELD_NUMBER: _ClassVar[int]
    REJECT_HINT_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTOR_FIELD_NUMBER: _ClassVar[int]
    group_id: int
    type: int
    to_replica_id: int
    from_replica_id: int
    term: int
    log_term: int
    index: int
    entries: _containers.RepeatedCompositeFieldContainer[RaftEntry]
    commit: int
    reject: bool
    reject_hint: int
    context: bytes
    round: int
    snapshot: RaftSnapshotMetadata
    descriptor: _types_pb2.RangeDescriptor
    def __init__(self, group_id: _Optional[int] = ..., type: _Optional[int] = ..., to_replica_id: _Optional[int] = ..., from_replica_id: _Optional[int] = ..., term: _Optional[int] = ..., log_term: _Optional[int] = ..., index: _Optional[int] = ..., entries: _Optional[_Iterable[_Union[RaftEntry, _Mapping]]] = ..., commit: _Optional[int] = ..., reject: _Optional[bool] = ..., reject_hint: _Optional[int] = ..., context: _Optional[bytes] = ..., round: _Optional[int] = ..., snapshot: _Optional[_Union[RaftSnapshotMetadata, _Mapping]] = ..., descriptor: _Optional[_Union[_types_pb2.RangeDescriptor, _Mapping]] = ...) -> None: ...

class RaftStreamRequest(_message.Message):
    __slots__ = ("from_node_id", "to_node_id", "lane", "messages", "sender_clock")
    FROM_NODE_ID_FIELD_NUMBER: _ClassVar[int]
    TO_NODE_ID_FIELD_NUMBER: _ClassVar[int]
    LANE_FIELD_NUMBER: _ClassVar[int]
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    SENDER_CLOCK_FIELD_NUMBER: _ClassVar[int]
    from_node_id: int
    to_node_id: int
    lane: RaftLane
    messages: _containers.RepeatedCompositeFieldContainer[RaftMessage]
    sender_clock: _types_pb2.Timestamp
    def __init__(self, from_node_id: _Optional[int] = ..., to_node_id: _Optional[int] = ..., lane: _Optional[_Union[RaftLane, str]] = ..., messages: _Optional[_Iterable[_Union[RaftMessage, _Mapping]]] = ..., sender_clock: _Optional[_Union[_types_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class RaftStreamResponse(_message.Message):
    __slots__ = ("wrong_node", "node_id")
    WRONG_NODE_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    wrong_node: bool
    node_id: int
    def __init__(self, wrong_node: _Optional[bool] = ..., node_id: _Optional[int] = ...) -> None: ...

class SnapshotHeader(_message.Message):
    __slots__ = ("from_node_id", "to_node_id", "message", "descriptor", "total_bytes")
    FROM_NODE_ID_FIELD_NUMBER: _ClassVar[int]
    TO_NODE_ID_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTOR_FIELD_NUMBER: _ClassVar[int]
    TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    from_node_id: int
    to_node_id: int
    message: RaftMessage
    descriptor: _types_pb2.RangeDescriptor
    total_bytes: int
    def __init__(self, from_node_id: _Optional[int] = ..., to_node_id: _Optional[int] = ..., message: _Optional[_Union[RaftMessage, _Mapping]] = ..., descriptor: _Optional[_Union[_types_pb2.RangeDescriptor, _Mapping]] = ..., total_bytes: _Optional[int] = ...) -> None: ...

class SendSnapshotRequest(_message.Message):
    __slots__ = ("header", "data", "last")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    LAST_FIELD_NUMBER: _ClassVar[int]
    header: SnapshotHeader
    data: bytes
    last: bool
    def __init__(self, header: _Optional[_Union[SnapshotHeader, _Mapping]] = ..., data: _Optional[bytes] = ..., last: _Optional[bool] = ...) -> None: ...

class SendSnapshotResponse(_message.Message):
    __slots__ = ("applied", "message")
    APPLIED_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    applied: bool
    message: str
    def __init__(self, applied: _Optional[bool] = ..., message: _Optional[str] = ...) -> None: ...
