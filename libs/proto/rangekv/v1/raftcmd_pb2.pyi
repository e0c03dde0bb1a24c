from rangekv.v1 import replica_pb2 as _replica_pb2
from rangekv.v1 import types_pb2 as _types_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class TxnOpKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TXN_OP_KIND_UNSPECIFIED: _ClassVar[TxnOpKind]
    TXN_OP_KIND_CREATE: _ClassVar[TxnOpKind]
    TXN_OP_KIND_HEARTBEAT: _ClassVar[TxnOpKind]
    TXN_OP_KIND_PUSH: _ClassVar[TxnOpKind]
    TXN_OP_KIND_COMMIT: _ClassVar[TxnOpKind]
    TXN_OP_KIND_ABORT: _ClassVar[TxnOpKind]
    TXN_OP_KIND_CLEAR_INTENTS: _ClassVar[TxnOpKind]
TXN_OP_KIND_UNSPECIFIED: TxnOpKind
TXN_OP_KIND_CREATE: TxnOpKind
TXN_OP_KIND_HEARTBEAT: TxnOpKind
TXN_OP_KIND_PUSH: TxnOpKind
TXN_OP_KIND_COMMIT: TxnOpKind
TXN_OP_KIND_ABORT: TxnOpKind
TXN_OP_KIND_CLEAR_INTENTS: TxnOpKind

class RaftCommand(_message.Message):
    __slots__ = ("timestamp", "writes", "gc_threshold", "txn_op")
    TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    WRITES_FIELD_NUMBER: _ClassVar[int]
    GC_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    TXN_OP_FIELD_NUMBER: _ClassVar[int]
    timestamp: _types_pb2.Timestamp
    writes: _containers.RepeatedCompositeFieldContainer[_replica_pb2.ReplicaOp]
    gc_threshold: _types_pb2.Timestamp
    txn_op: TxnOp
    def __init__(self, timestamp: _Optional[_Union[_types_pb2.Timestamp, _Mapping]] = ..., writes: _Optional[_Iterable[_Union[_replica_pb2.ReplicaOp, _Mapping]]] = ..., gc_threshold: _Optional[_Union[_types_pb2.Timestamp, _Mapping]] = ..., txn_op: _Optional[_Union[TxnOp, _Mapping]] = ...) -> None: ...

class TxnOp(_message.Message):
    __slots__ = ("kind", "txn", "expired_before", "split_left", "split_right", "intent_keys")
    KIND_FIELD_NUMBER: _ClassVar[int]
    TXN_FIELD_NUMBER: _ClassVar[int]
    EXPIRED_BEFORE_FIELD_NUMBER: _ClassVar[int]
    SPLIT_LEFT_FIELD_NUMBER: _ClassVar[int]
    SPLIT_RIGHT_FIELD_NUMBER: _ClassVar[int]
    INTENT_KEYS_FIELD_NUMBER: _ClassVar[int]
    kind: TxnOpKind
    txn: _types_pb2.TxnMeta
    expired_before: _types_pb2.Timestamp
    split_left: _types_pb2.RangeDescriptor
    split_right: _types_pb2.RangeDescriptor
    intent_keys: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, kind: _Optional[_Union[TxnOpKind, str]] = ..., txn: _Optional[_Union[_types_pb2.TxnMeta, _Mapping]] = ..., expired_before: _Optional[_Union[_types_pb2.Timestamp, _Mapping]] = ..., split_left: _Optional[_Union[_types_pb2.RangeDescriptor, _Mapping]] = ..., split_right: _Optional[_Union[_types_pb2.RangeDescriptor, _Mapping]] = ..., intent_keys: _Optional[_Iterable[bytes]] = ...) -> None: ...

class RaftCommandResult(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[_replica_pb2.ReplicaOpResult]
    def __init__(self, results: _Optional[_Iterable[_Union[_replica_pb2.ReplicaOpResult, _Mapping]]] = ...) -> None: ...

class ReplicaChangeContext(_message.Message):
    __slots__ = ("txn", "descriptor")
    TXN_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTOR_FIELD_NUMBER: _ClassVar[int]
    txn: _types_pb2.TxnMeta
    descriptor: _types_pb2.RangeDescriptor
    def __init__(self, txn: _Optional[_Union[_types_pb2.TxnMeta, _Mapping]] = ..., descriptor: _Optional[_Union[_types_pb2.RangeDescriptor, _Mapping]] = ...) -> None: ...
