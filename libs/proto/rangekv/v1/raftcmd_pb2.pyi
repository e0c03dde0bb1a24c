from rangekv.v1 import replica_pb2 as _replica_pb2
from rangekv.v1 import types_pb2 as _types_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RaftCommand(_message.Message):
    __slots__ = ("timestamp", "writes", "gc_threshold")
    TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    WRITES_FIELD_NUMBER: _ClassVar[int]
    GC_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    timestamp: _types_pb2.Timestamp
    writes: _containers.RepeatedCompositeFieldContainer[_replica_pb2.ReplicaOp]
    gc_threshold: _types_pb2.Timestamp
    def __init__(self, timestamp: _Optional[_Union[_types_pb2.Timestamp, _Mapping]] = ..., writes: _Optional[_Iterable[_Union[_replica_pb2.ReplicaOp, _Mapping]]] = ..., gc_threshold: _Optional[_Union[_types_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class RaftCommandResult(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[_replica_pb2.ReplicaOpResult]
    def __init__(self, results: _Optional[_Iterable[_Union[_replica_pb2.ReplicaOpResult, _Mapping]]] = ...) -> None: ...
