from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ReplicaType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    REPLICA_TYPE_UNSPECIFIED: _ClassVar[ReplicaType]
    REPLICA_TYPE_VOTER: _ClassVar[ReplicaType]
    REPLICA_TYPE_LEARNER: _ClassVar[ReplicaType]

class TxnStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TXN_STATUS_UNSPECIFIED: _ClassVar[TxnStatus]
    TXN_STATUS_PENDING: _ClassVar[TxnStatus]
    TXN_STATUS_COMMITTED: _ClassVar[TxnStatus]
    TXN_STATUS_ABORTED: _ClassVar[TxnStatus]
REPLICA_TYPE_UNSPECIFIED: ReplicaType
REPLICA_TYPE_VOTER: ReplicaType
REPLICA_TYPE_LEARNER: ReplicaType
TXN_STATUS_UNSPECIFIED: TxnStatus
TXN_STATUS_PENDING: TxnStatus
TXN_STATUS_COMMITTED: TxnStatus
TXN_STATUS_ABORTED: TxnStatus

class Timestamp(_message.Message):
    __slots__ = ("wall_time", "logical")
    WALL_TIME_FIELD_NUMBER: _ClassVar[int]
    LOGICAL_FIELD_NUMBER: _ClassVar[int]
    wall_time: int
    logical: int
    def __init__(self, wall_time: _Optional[int] = ..., logical: _Optional[int] = ...) -> None: ...

class KeyValue(_message.Message):
    __slots__ = ("key", "value", "version")
    KEY_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    key: bytes
    value: bytes
    version: Timestamp
    def __init__(self, key: _Optional[bytes] = ..., value: _Optional[bytes] = ..., version: _Optional[_Union[Timestamp, _Mapping]] = ...) -> None: ...

class ReplicaDescriptor(_message.Message):
    __slots__ = ("node_id", "replica_id", "type")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    REPLICA_ID_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    node_id: int
    replica_id: int
    type: ReplicaType
    def __init__(self, node_id: _Optional[int] = ..., replica_id: _Optional[int] = ..., type: _Optional[_Union[ReplicaType, str]] = ...) -> None: ...

class RangeDescriptor(_message.Message):
    __slots__ = ("range_id", "start_key", "end_key", "replicas", "generation", "next_replica_id")
    RANGE_ID_FIELD_NUMBER: _ClassVar[int]
    START_KEY_FIELD_NUMBER: _ClassVar[int]
    END_KEY_FIELD_NUMBER: _ClassVar[int]
    REPLICAS_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    NEXT_REPLICA_ID_FIELD_NUMBER: _ClassVar[int]
    range_id: int
    start_key: bytes
    end_key: bytes
    replicas: _containers.RepeatedCompositeFieldContainer[ReplicaDescriptor]
    generation: int
    next_replica_id: int
    def __init__(self, range_id: _Optional[int] = ..., start_key: _Optional[bytes] = ..., end_key: _Optional[bytes] = ..., replicas: _Optional[_Iterable[_Union[ReplicaDescriptor, _Mapping]]] = ..., generation: _Optional[int] = ..., next_replica_id: _Optional[int] = ...) -> None: ...

class NodeDescriptor(_message.Message):
    __slots__ = ("node_id", "address", "metrics_address")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    METRICS_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    node_id: int
    address: str
    metrics_address: str
    def __init__(self, node_id: _Optional[int] = ..., address: _Optional[str] = ..., metrics_address: _Optional[str] = ...) -> None: ...

class TxnMeta(_message.Message):
    __slots__ = ("id", "record_key", "kind")
    ID_FIELD_NUMBER: _ClassVar[int]
    RECORD_KEY_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    id: bytes
    record_key: bytes
    kind: str
    def __init__(self, id: _Optional[bytes] = ..., record_key: _Optional[bytes] = ..., kind: _Optional[str] = ...) -> None: ...

class TxnRecord(_message.Message):
    __slots__ = ("meta", "status", "last_heartbeat", "intent_keys")
    META_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    LAST_HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    INTENT_KEYS_FIELD_NUMBER: _ClassVar[int]
    meta: TxnMeta
    status: TxnStatus
    last_heartbeat: Timestamp
    intent_keys: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, meta: _Optional[_Union[TxnMeta, _Mapping]] = ..., status: _Optional[_Union[TxnStatus, str]] = ..., last_heartbeat: _Optional[_Union[Timestamp, _Mapping]] = ..., intent_keys: _Optional[_Iterable[bytes]] = ...) -> None: ...

class StateChecksum(_message.Message):
    __slots__ = ("applied_index", "digest")
    APPLIED_INDEX_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    applied_index: int
    digest: str
    def __init__(self, applied_index: _Optional[int] = ..., digest: _Optional[str] = ...) -> None: ...
