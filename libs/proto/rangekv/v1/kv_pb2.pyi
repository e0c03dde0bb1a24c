import datetime

from google.protobuf import duration_pb2 as _duration_pb2
from google.rpc import status_pb2 as _status_pb2
from rangekv.v1 import types_pb2 as _types_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ReadConsistency(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    READ_CONSISTENCY_UNSPECIFIED: _ClassVar[ReadConsistency]
    READ_CONSISTENCY_LINEARIZABLE: _ClassVar[ReadConsistency]
    READ_CONSISTENCY_INCONSISTENT: _ClassVar[ReadConsistency]
READ_CONSISTENCY_UNSPECIFIED: ReadConsistency
READ_CONSISTENCY_LINEARIZABLE: ReadConsistency
READ_CONSISTENCY_INCONSISTENT: ReadConsistency

class GetRequest(_message.Message):
    __slots__ = ("key", "consistency")
    KEY_FIELD_NUMBER: _ClassVar[int]
    CONSISTENCY_FIELD_NUMBER: _ClassVar[int]
    key: bytes
    consistency: ReadConsistency
    def __init__(self, key: _Optional[bytes] = ..., consistency: _Optional[_Union[ReadConsistency, str]] = ...) -> None: ...

class GetResponse(_message.Message):
    __slots__ = ("found", "kv")
    FOUND_FIELD_NUMBER: _ClassVar[int]
    KV_FIELD_NUMBER: _ClassVar[int]
    found: bool
    kv: _types_pb2.KeyValue
    def __init__(self, found: _Optional[bool] = ..., kv: _Optional[_Union[_types_pb2.KeyValue, _Mapping]] = ...) -> None: ...

class PutRequest(_message.Message):
    __slots__ = ("key", "value")
    KEY_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    key: bytes
    value: bytes
    def __init__(self, key: _Optional[bytes] = ..., value: _Optional[bytes] = ...) -> None: ...

class PutResponse(_message.Message):
    __slots__ = ("version",)
    VERSION_FIELD_NUMBER: _ClassVar[int]
    version: _types_pb2.Timestamp
    def __init__(self, version: _Optional[_Union[_types_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class DeleteRequest(_message.Message):
    __slots__ = ("key",)
    KEY_FIELD_NUMBER: _ClassVar[int]
    key: bytes
    def __init__(self, key: _Optional[bytes] = ...) -> None: ...

class DeleteResponse(_message.Message):
    __slots__ = ("deleted", "version")
    DELETED_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    deleted: bool
    version: _types_pb2.Timestamp
    def __init__(self, deleted: _Optional[bool] = ..., version: _Optional[_Union[_types_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class CompareAndSwapRequest(_message.Message):
    __slots__ = ("key", "expected_value", "expect_absent", "new_value")
    KEY_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_VALUE_FIELD_NUMBER: _ClassVar[int]
    EXPECT_ABSENT_FIELD_NUMBER: _ClassVar[int]
    NEW_VALUE_FIELD_NUMBER: _ClassVar[int]
    key: bytes
    expected_value: bytes
    expect_absent: bool
    new_value: bytes
    def __init__(self, key: _Optional[bytes] = ..., expected_value: _Optional[bytes] = ..., expect_absent: _Optional[bool] = ..., new_value: _Optional[bytes] = ...) -> None: ...

class CompareAndSwapResponse(_message.Message):
    __slots__ = ("succeeded", "current")
    SUCCEEDED_FIELD_NUMBER: _ClassVar[int]
    CURRENT_FIELD_NUMBER: _ClassVar[int]
    succeeded: bool
    current: _types_pb2.KeyValue
    def __init__(self, succeeded: _Optional[bool] = ..., current: _Optional[_Union[_types_pb2.KeyValue, _Mapping]] = ...) -> None: ...

class ScanRequest(_message.Message):
    __slots__ = ("start_key", "end_key", "limit", "consistency")
    START_KEY_FIELD_NUMBER: _ClassVar[int]
    END_KEY_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    CONSISTENCY_FIELD_NUMBER: _ClassVar[int]
    start_key: bytes
    end_key: bytes
    limit: int
    consistency: ReadConsistency
    def __init__(self, start_key: _Optional[bytes] = ..., end_key: _Optional[bytes] = ..., limit: _Optional[int] = ..., consistency: _Optional[_Union[ReadConsistency, str]] = ...) -> None: ...

class ScanResponse(_message.Message):
    __slots__ = ("kvs", "read_timestamp")
    KVS_FIELD_NUMBER: _ClassVar[int]
    READ_TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    kvs: _containers.RepeatedCompositeFieldContainer[_types_pb2.KeyValue]
    read_timestamp: _types_pb2.Timestamp
    def __init__(self, kvs: _Optional[_Iterable[_Union[_types_pb2.KeyValue, _Mapping]]] = ..., read_timestamp: _Optional[_Union[_types_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class BatchRequest(_message.Message):
    __slots__ = ("requests",)
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    requests: _containers.RepeatedCompositeFieldContainer[BatchRequestItem]
    def __init__(self, requests: _Optional[_Iterable[_Union[BatchRequestItem, _Mapping]]] = ...) -> None: ...

class BatchRequestItem(_message.Message):
    __slots__ = ("get", "put", "delete", "compare_and_swap")
    GET_FIELD_NUMBER: _ClassVar[int]
    PUT_FIELD_NUMBER: _ClassVar[int]
    DELETE_FIELD_NUMBER: _ClassVar[int]
    COMPARE_AND_SWAP_FIELD_NUMBER: _ClassVar[int]
    get: GetRequest
    put: PutRequest
    delete: DeleteRequest
    compare_and_swap: CompareAndSwapRequest
    def __init__(self, get: _Optional[_Union[GetRequest, _Mapping]] = ..., put: _Optional[_Union[PutRequest, _Mapping]] = ..., delete: _Optional[_Union[DeleteRequest, _Mapping]] = ..., compare_and_swap: _Optional[_Union[CompareAndSwapRequest, _Mapping]] = ...) -> None: ...

class BatchResponse(_message.Message):
    __slots__ = ("responses",)
    RESPONSES_FIELD_NUMBER: _ClassVar[int]
    responses: _containers.RepeatedCompositeFieldContainer[BatchResponseItem]
    def __init__(self, responses: _Optional[_Iterable[_Union[BatchResponseItem, _Mapping]]] = ...) -> None: ...

class BatchResponseItem(_message.Message):
    __slots__ = ("get", "put", "delete", "compare_and_swap")
    GET_FIELD_NUMBER: _ClassVar[int]
    PUT_FIELD_NUMBER: _ClassVar[int]
    DELETE_FIELD_NUMBER: _ClassVar[int]
    COMPARE_AND_SWAP_FIELD_NUMBER: _ClassVar[int]
    get: GetResponse
    put: PutResponse
    delete: DeleteResponse
    compare_and_swap: CompareAndSwapResponse
    def __init__(self, get: _Optional[_Union[GetResponse, _Mapping]] = ..., put: _Optional[_Union[PutResponse, _Mapping]] = ..., delete: _Optional[_Union[DeleteResponse, _Mapping]] = ..., compare_and_swap: _Optional[_Union[CompareAndSwapResponse, _Mapping]] = ...) -> None: ...

class StreamRequest(_message.Message):
    __slots__ = ("requests",)
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    requests: _containers.RepeatedCompositeFieldContainer[StreamRequestItem]
    def __init__(self, requests: _Optional[_Iterable[_Union[StreamRequestItem, _Mapping]]] = ...) -> None: ...

class StreamRequestItem(_message.Message):
    __slots__ = ("request_id", "timeout", "get", "put", "delete", "compare_and_swap", "batch")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    GET_FIELD_NUMBER: _ClassVar[int]
    PUT_FIELD_NUMBER: _ClassVar[int]
    DELETE_FIELD_NUMBER: _ClassVar[int]
    COMPARE_AND_SWAP_FIELD_NUMBER: _ClassVar[int]
    BATCH_FIELD_NUMBER: _ClassVar[int]
    request_id: int
    timeout: _duration_pb2.Duration
    get: GetRequest
    put: PutRequest
    delete: DeleteRequest
    compare_and_swap: CompareAndSwapRequest
    batch: BatchRequest
    def __init__(self, request_id: _Optional[int] = ..., timeout: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., get: _Optional[_Union[GetRequest, _Mapping]] = ..., put: _Optional[_Union[PutRequest, _Mapping]] = ..., delete: _Optional[_Union[DeleteRequest, _Mapping]] = ..., compare_and_swap: _Optional[_Union[CompareAndSwapRequest, _Mapping]] = ..., batch: _Optional[_Union[BatchRequest, _Mapping]] = ...) -> None: ...

class StreamResponse(_message.Message):
    __slots__ = ("responses",)
    RESPONSES_FIELD_NUMBER: _ClassVar[int]
    responses: _containers.RepeatedCompositeFieldContainer[StreamResponseItem]
    def __init__(self, responses: _Optional[_Iterable[_Union[StreamResponseItem, _Mapping]]] = ...) -> None: ...

class StreamResponseItem(_message.Message):
    __slots__ = ("request_id", "get", "put", "delete", "compare_and_swap", "batch", "error")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    GET_FIELD_NUMBER: _ClassVar[int]
    PUT_FIELD_NUMBER: _ClassVar[int]
    DELETE_FIELD_NUMBER: _ClassVar[int]
    COMPARE_AND_SWAP_FIELD_NUMBER: _ClassVar[int]
    BATCH_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    request_id: int
    get: GetResponse
    put: PutResponse
    delete: DeleteResponse
    compare_and_swap: CompareAndSwapResponse
    batch: BatchResponse
    error: _status_pb2.Status
    def __init__(self, request_id: _Optional[int] = ..., get: _Optional[_Union[GetResponse, _Mapping]] = ..., put: _Optional[_Union[PutResponse, _Mapping]] = ..., delete: _Optional[_Union[DeleteResponse, _Mapping]] = ..., compare_and_swap: _Optional[_Union[CompareAndSwapResponse, _Mapping]] = ..., batch: _Optional[_Union[BatchResponse, _Mapping]] = ..., error: _Optional[_Union[_status_pb2.Status, _Mapping]] = ...) -> None: ...
