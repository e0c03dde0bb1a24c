from rangekv.v1 import errors_pb2 as _errors_pb2
from rangekv.v1 import types_pb2 as _types_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ReplicaChangeType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    REPLICA_CHANGE_TYPE_UNSPECIFIED: _ClassVar[ReplicaChangeType]
    REPLICA_CHANGE_TYPE_ADD_LEARNER: _ClassVar[ReplicaChangeType]
    REPLICA_CHANGE_TYPE_PROMOTE_VOTER: _ClassVar[ReplicaChangeType]
    REPLICA_CHANGE_TYPE_REMOVE: _ClassVar[ReplicaChangeType]
REPLICA_CHANGE_TYPE_UNSPECIFIED: ReplicaChangeType
REPLICA_CHANGE_TYPE_ADD_LEARNER: ReplicaChangeType
REPLICA_CHANGE_TYPE_PROMOTE_VOTER: ReplicaChangeType
REPLICA_CHANGE_TYPE_REMOVE: ReplicaChangeType

class ReplicaBatchRequest(_message.Message):
    __slots__ = ("range_id", "routed_generation", "read_timestamp", "inconsistent", "ops", "traceparents", "fence_id")
    RANGE_ID_FIELD_NUMBER: _ClassVar[int]
    ROUTED_GENERATION_FIELD_NUMBER: _ClassVar[int]
    READ_TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    INCONSISTENT_FIELD_NUMBER: _ClassVar[int]
    OPS_FIELD_NUMBER: _ClassVar[int]
    TRACEPARENTS_FIELD_NUMBER: _ClassVar[int]
    FENCE_ID_FIELD_NUMBER: _ClassVar[int]
    range_id: int
    routed_generation: int
    read_timestamp: _types_pb2.Timestamp
    inconsistent: bool
    ops: _containers.RepeatedCompositeFieldContainer[ReplicaOp]
    traceparents: _containers.RepeatedScalarFieldContainer[str]
    fence_id: bytes
    def __init__(self, range_id: _Optional[int] = ..., routed_generation: _Optional[int] = ..., read_timestamp: _Optional[_Union[_types_pb2.Timestamp, _Mapping]] = ..., inconsistent: _Optional[bool] = ..., ops: _Optional[_Iterable[_Union[ReplicaOp, _Mapping]]] = ..., traceparents: _Optional[_Iterable[str]] = ..., fence_id: _Optional[bytes] = ...) -> None: ...

class ReplicaBatchResponse(_message.Message):
    __slots__ = ("results", "error", "read_timestamp", "descriptor", "lease_sequence")
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    READ_TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTOR_FIELD_NUMBER: _ClassVar[int]
    LEASE_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[ReplicaOpResult]
    error: _errors_pb2.ReplicaError
    read_timestamp: _types_pb2.Timestamp
    descriptor: _types_pb2.RangeDescriptor
    lease_sequence: int
    def __init__(self, results: _Optional[_Iterable[_Union[ReplicaOpResult, _Mapping]]] = ..., error: _Optional[_Union[_errors_pb2.ReplicaError, _Mapping]] = ..., read_timestamp: _Optional[_Union[_types_pb2.Timestamp, _Mapping]] = ..., descriptor: _Optional[_Union[_types_pb2.RangeDescriptor, _Mapping]] = ..., lease_sequence: _Optional[int] = ...) -> None: ...

class BatchStreamRequest(_message.Message):
    __slots__ = ("request_id", "batch")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    BATCH_FIELD_NUMBER: _ClassVar[int]
    request_id: int
    batch: ReplicaBatchRequest
    def __init__(self, request_id: _Optional[int] = ..., batch: _Optional[_Union[ReplicaBatchRequest, _Mapping]] = ...) -> None: ...

class BatchStreamResponse(_message.Message):
    __slots__ = ("request_id", "batch")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    BATCH_FIELD_NUMBER: _ClassVar[int]
    request_id: int
    batch: ReplicaBatchResponse
    def __init__(self, request_id: _Optional[int] = ..., batch: _Optional[_Union[ReplicaBatchResponse, _Mapping]] = ...) -> None: ...

class BatchFramesRequest(_message.Message):
    __slots__ = ("requests",)
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    requests: _containers.RepeatedCompositeFieldContainer[BatchStreamRequest]
    def __init__(self, requests: _Optional[_Iterable[_Union[BatchStreamRequest, _Mapping]]] = ...) -> None: ...

class BatchFramesResponse(_message.Message):
    __slots__ = ("responses",)
    RESPONSES_FIELD_NUMBER: _ClassVar[int]
    responses: _containers.RepeatedCompositeFieldContainer[BatchStreamResponse]
    def __init__(self, responses: _Optional[_Iterable[_Union[BatchStreamResponse, _Mapping]]] = ...) -> None: ...

class ReplicaOp(_message.Message):
    __slots__ = ("get", "put", "delete", "compare_and_swap", "scan", "fence")
    GET_FIELD_NUMBER: _ClassVar[int]
    PUT_FIELD_NUMBER: _ClassVar[int]
    DELETE_FIELD_NUMBER: _ClassVar[int]
    COMPARE_AND_SWAP_FIELD_NUMBER: _ClassVar[int]
    SCAN_FIELD_NUMBER: _ClassVar[int]
    FENCE_FIELD_NUMBER: _ClassVar[int]
    get: GetOp
    put: PutOp
    delete: DeleteOp
    compare_and_swap: CompareAndSwapOp
    scan: ScanOp
    fence: FenceOp
    def __init__(self, get: _Optional[_Union[GetOp, _Mapping]] = ..., put: _Optional[_Union[PutOp, _Mapping]] = ..., delete: _Optional[_Union[DeleteOp, _Mapping]] = ..., compare_and_swap: _Optional[_Union[CompareAndSwapOp, _Mapping]] = ..., scan: _Optional[_Union[ScanOp, _Mapping]] = ..., fence: _Optional[_Union[FenceOp, _Mapping]] = ...) -> None: ...

class GetOp(_message.Message):
    __slots__ = ("key",)
    KEY_FIELD_NUMBER: _ClassVar[int]
    key: bytes
    def __init__(self, key: _Optional[bytes] = ...) -> None: ...

class PutOp(_message.Message):
    __slots__ = ("key", "value")
    KEY_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    key: bytes
    value: bytes
    def __init__(self, key: _Optional[bytes] = ..., value: _Optional[bytes] = ...) -> None: ...

class DeleteOp(_message.Message):
    __slots__ = ("key",)
    KEY_FIELD_NUMBER: _ClassVar[int]
    key: bytes
    def __init__(self, key: _Optional[bytes] = ...) -> None: ...

class CompareAndSwapOp(_message.Message):
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

class ScanOp(_message.Message):
    __slots__ = ("start_key", "end_key", "limit", "max_bytes")
    START_KEY_FIELD_NUMBER: _ClassVar[int]
    END_KEY_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    MAX_BYTES_FIELD_NUMBER: _ClassVar[int]
    start_key: bytes
    end_key: bytes
    limit: int
    max_bytes: int
    def __init__(self, start_key: _Optional[bytes] = ..., end_key: _Optional[bytes] = ..., limit: _Optional[int] = ..., max_bytes: _Optional[int] = ...) -> None: ...

class FenceOp(_message.Message):
    __slots__ = ("start_key", "end_key", "fence_id", "hold_millis")
    START_KEY_FIELD_NUMBER: _ClassVar[int]
    END_KEY_FIELD_NUMBER: _ClassVar[int]
    FENCE_ID_FIELD_NUMBER: _ClassVar[int]
    HOLD_MILLIS_FIELD_NUMBER: _ClassVar[int]
    start_key: bytes
    end_key: bytes
    fence_id: bytes
    hold_millis: int
    def __init__(self, start_key: _Optional[bytes] = ..., end_key: _Optional[bytes] = ..., fence_id: _Optional[bytes] = ..., hold_millis: _Optional[int] = ...) -> None: ...

class ReplicaOpResult(_message.Message):
    __slots__ = ("get", "put", "delete", "compare_and_swap", "scan", "fence")
    GET_FIELD_NUMBER: _ClassVar[int]
    PUT_FIELD_NUMBER: _ClassVar[int]
    DELETE_FIELD_NUMBER: _ClassVar[int]
    COMPARE_AND_SWAP_FIELD_NUMBER: _ClassVar[int]
    SCAN_FIELD_NUMBER: _ClassVar[int]
    FENCE_FIELD_NUMBER: _ClassVar[int]
    get: GetResult
    put: PutResult
    delete: DeleteResult
    compare_and_swap: CompareAndSwapResult
    scan: ScanResult
    fence: FenceResult
    def __init__(self, get: _Optional[_Union[GetResult, _Mapping]] = ..., put: _Optional[_Union[PutResult, _Mapping]] = ..., delete: _Optional[_Union[DeleteResult, _Mapping]] = ..., compare_and_swap: _Optional[_Union[CompareAndSwapResult, _Mapping]] = ..., scan: _Optional[_Union[ScanResult, _Mapping]] = ..., fence: _Optional[_Union[FenceResult, _Mapping]] = ...) -> None: ...

class GetResult(_message.Message):
    __slots__ = ("found", "kv")
    FOUND_FIELD_NUMBER: _ClassVar[int]
    KV_FIELD_NUMBER: _ClassVar[int]
    found: bool
    kv: _types_pb2.KeyValue
    def __init__(self, found: _Optional[bool] = ..., kv: _Optional[_Union[_types_pb2.KeyValue, _Mapping]] = ...) -> None: ...

class PutResult(_message.Message):
    __slots__ = ("version",)
    VERSION_FIELD_NUMBER: _ClassVar[int]
    version: _types_pb2.Timestamp
    def __init__(self, version: _Optional[_Union[_types_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class DeleteResult(_message.Message):
    __slots__ = ("deleted", "version")
    DELETED_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    deleted: bool
    version: _types_pb2.Timestamp
    def __init__(self, deleted: _Optional[bool] = ..., version: _Optional[_Union[_types_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class CompareAndSwapResult(_message.Message):
    __slots__ = ("succeeded", "current")
    SUCCEEDED_FIELD_NUMBER: _ClassVar[int]
    CURRENT_FIELD_NUMBER: _ClassVar[int]
    succeeded: bool
    current: _types_pb2.KeyValue
    def __init__(self, succeeded: _Optional[bool] = ..., current: _Optional[_Union[_types_pb2.KeyValue, _Mapping]] = ...) -> None: ...

class ScanResult(_message.Message):
    __slots__ = ("kvs", "resume_key")
    KVS_FIELD_NUMBER: _ClassVar[int]
    RESUME_KEY_FIELD_NUMBER: _ClassVar[int]
    kvs: _containers.RepeatedCompositeFieldContainer[_types_pb2.KeyValue]
    resume_key: bytes
    def __init__(self, kvs: _Optional[_Iterable[_Union[_types_pb2.KeyValue, _Mapping]]] = ..., resume_key: _Optional[bytes] = ...) -> None: ...

class FenceResult(_message.Message):
    __slots__ = ("timestamp", "start_key", "end_key")
    TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    START_KEY_FIELD_NUMBER: _ClassVar[int]
    END_KEY_FIELD_NUMBER: _ClassVar[int]
    timestamp: _types_pb2.Timestamp
    start_key: bytes
    end_key: bytes
    def __init__(self, timestamp: _Optional[_Union[_types_pb2.Timestamp, _Mapping]] = ..., start_key: _Optional[bytes] = ..., end_key: _Optional[bytes] = ...) -> None: ...

class AdminSplitRequest(_message.Message):
    __slots__ = ("range_id", "split_key")
    RANGE_ID_FIELD_NUMBER: _ClassVar[int]
    SPLIT_KEY_FIELD_NUMBER: _ClassVar[int]
    range_id: int
    split_key: bytes
    def __init__(self, range_id: _Optional[int] = ..., split_key: _Optional[bytes] = ...) -> None: ...

class AdminSplitResponse(_message.Message):
    __slots__ = ("left", "right", "error")
    LEFT_FIELD_NUMBER: _ClassVar[int]
    RIGHT_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    left: _types_pb2.RangeDescriptor
    right: _types_pb2.RangeDescriptor
    error: _errors_pb2.ReplicaError
    def __init__(self, left: _Optional[_Union[_types_pb2.RangeDescriptor, _Mapping]] = ..., right: _Optional[_Union[_types_pb2.RangeDescriptor, _Mapping]] = ..., error: _Optional[_Union[_errors_pb2.ReplicaError, _Mapping]] = ...) -> None: ...

class TransferLeaseRequest(_message.Message):
    __slots__ = ("range_id", "target_node_id")
    RANGE_ID_FIELD_NUMBER: _ClassVar[int]
    TARGET_NODE_ID_FIELD_NUMBER: _ClassVar[int]
    range_id: int
    target_node_id: int
    def __init__(self, range_id: _Optional[int] = ..., target_node_id: _Optional[int] = ...) -> None: ...

class TransferLeaseResponse(_message.Message):
    __slots__ = ("error", "lease_sequence")
    ERROR_FIELD_NUMBER: _ClassVar[int]
    LEASE_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    error: _errors_pb2.ReplicaError
    lease_sequence: int
    def __init__(self, error: _Optional[_Union[_errors_pb2.ReplicaError, _Mapping]] = ..., lease_sequence: _Optional[int] = ...) -> None: ...

class ReplicaChange(_message.Message):
    __slots__ = ("type", "node_id")
    TYPE_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    type: ReplicaChangeType
    node_id: int
    def __init__(self, type: _Optional[_Union[ReplicaChangeType, str]] = ..., node_id: _Optional[int] = ...) -> None: ...

class ChangeReplicasRequest(_message.Message):
    __slots__ = ("range_id", "expected_generation", "changes")
    RANGE_ID_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_GENERATION_FIELD_NUMBER: _ClassVar[int]
    CHANGES_FIELD_NUMBER: _ClassVar[int]
    range_id: int
    expected_generation: int
    changes: _containers.RepeatedCompositeFieldContainer[ReplicaChange]
    def __init__(self, range_id: _Optional[int] = ..., expected_generation: _Optional[int] = ..., changes: _Optional[_Iterable[_Union[ReplicaChange, _Mapping]]] = ...) -> None: ...

class ChangeReplicasResponse(_message.Message):
    __slots__ = ("descriptor", "error")
    DESCRIPTOR_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    descriptor: _types_pb2.RangeDescriptor
    error: _errors_pb2.ReplicaError
    def __init__(self, descriptor: _Optional[_Union[_types_pb2.RangeDescriptor, _Mapping]] = ..., error: _Optional[_Union[_errors_pb2.ReplicaError, _Mapping]] = ...) -> None: ...

class RangeInfoRequest(_message.Message):
    __slots__ = ("range_ids", "counts_only", "checksums")
    RANGE_IDS_FIELD_NUMBER: _ClassVar[int]
    COUNTS_ONLY_FIELD_NUMBER: _ClassVar[int]
    CHECKSUMS_FIELD_NUMBER: _ClassVar[int]
    range_ids: _containers.RepeatedScalarFieldContainer[int]
    counts_only: bool
    checksums: bool
    def __init__(self, range_ids: _Optional[_Iterable[int]] = ..., counts_only: _Optional[bool] = ..., checksums: _Optional[bool] = ...) -> None: ...

class ReplicaInfo(_message.Message):
    __slots__ = ("descriptor", "replica_id", "is_leader", "lease_valid", "lease_sequence", "leader_replica_id", "applied_index", "commit_index", "approximate_size_bytes", "log_first_index", "checksum")
    DESCRIPTOR_FIELD_NUMBER: _ClassVar[int]
    REPLICA_ID_FIELD_NUMBER: _ClassVar[int]
    IS_LEADER_FIELD_NUMBER: _ClassVar[int]
    LEASE_VALID_FIELD_NUMBER: _ClassVar[int]
    LEASE_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    LEADER_REPLICA_ID_FIELD_NUMBER: _ClassVar[int]
    APPLIED_INDEX_FIELD_NUMBER: _ClassVar[int]
    COMMIT_INDEX_FIELD_NUMBER: _ClassVar[int]
    APPROXIMATE_SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    LOG_FIRST_INDEX_FIELD_NUMBER: _ClassVar[int]
    CHECKSUM_FIELD_NUMBER: _ClassVar[int]
    descriptor: _types_pb2.RangeDescriptor
    replica_id: int
    is_leader: bool
    lease_valid: bool
    lease_sequence: int
    leader_replica_id: int
    applied_index: int
    commit_index: int
    approximate_size_bytes: int
    log_first_index: int
    checksum: _types_pb2.StateChecksum
    def __init__(self, descriptor: _Optional[_Union[_types_pb2.RangeDescriptor, _Mapping]] = ..., replica_id: _Optional[int] = ..., is_leader: _Optional[bool] = ..., lease_valid: _Optional[bool] = ..., lease_sequence: _Optional[int] = ..., leader_replica_id: _Optional[int] = ..., applied_index: _Optional[int] = ..., commit_index: _Optional[int] = ..., approximate_size_bytes: _Optional[int] = ..., log_first_index: _Optional[int] = ..., checksum: _Optional[_Union[_types_pb2.StateChecksum, _Mapping]] = ...) -> None: ...

class RangeInfoResponse(_message.Message):
    __slots__ = ("node_id", "replicas", "draining", "replica_count", "lease_count")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    REPLICAS_FIELD_NUMBER: _ClassVar[int]
    DRAINING_FIELD_NUMBER: _ClassVar[int]
    REPLICA_COUNT_FIELD_NUMBER: _ClassVar[int]
    LEASE_COUNT_FIELD_NUMBER: _ClassVar[int]
    node_id: int
    replicas: _containers.RepeatedCompositeFieldContainer[ReplicaInfo]
    draining: bool
    replica_count: int
    lease_count: int
    def __init__(self, node_id: _Optional[int] = ..., replicas: _Optional[_Iterable[_Union[ReplicaInfo, _Mapping]]] = ..., draining: _Optional[bool] = ..., replica_count: _Optional[int] = ..., lease_count: _Optional[int] = ...) -> None: ...

class PushTxnRequest(_message.Message):
    __slots__ = ("range_id", "txn")
    RANGE_ID_FIELD_NUMBER: _ClassVar[int]
    TXN_FIELD_NUMBER: _ClassVar[int]
    range_id: int
    txn: _types_pb2.TxnMeta
    def __init__(self, range_id: _Optional[int] = ..., txn: _Optional[_Union[_types_pb2.TxnMeta, _Mapping]] = ...) -> None: ...

class PushTxnResponse(_message.Message):
    __slots__ = ("record", "error")
    RECORD_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    record: _types_pb2.TxnRecord
    error: _errors_pb2.ReplicaError
    def __init__(self, record: _Optional[_Union[_types_pb2.TxnRecord, _Mapping]] = ..., error: _Optional[_Union[_errors_pb2.ReplicaError, _Mapping]] = ...) -> None: ...

class QueryTxnRequest(_message.Message):
    __slots__ = ("range_id", "txn")
    RANGE_ID_FIELD_NUMBER: _ClassVar[int]
    TXN_FIELD_NUMBER: _ClassVar[int]
    range_id: int
    txn: _types_pb2.TxnMeta
    def __init__(self, range_id: _Optional[int] = ..., txn: _Optional[_Union[_types_pb2.TxnMeta, _Mapping]] = ...) -> None: ...

class QueryTxnResponse(_message.Message):
    __slots__ = ("record", "error")
    RECORD_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    record: _types_pb2.TxnRecord
    error: _errors_pb2.ReplicaError
    def __init__(self, record: _Optional[_Union[_types_pb2.TxnRecord, _Mapping]] = ..., error: _Optional[_Union[_errors_pb2.ReplicaError, _Mapping]] = ...) -> None: ...

class EndTxnRequest(_message.Message):
    __slots__ = ("range_id", "txn", "status", "split_left", "split_right")
    RANGE_ID_FIELD_NUMBER: _ClassVar[int]
    TXN_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    SPLIT_LEFT_FIELD_NUMBER: _ClassVar[int]
    SPLIT_RIGHT_FIELD_NUMBER: _ClassVar[int]
    range_id: int
    txn: _types_pb2.TxnMeta
    status: _types_pb2.TxnStatus
    split_left: _types_pb2.RangeDescriptor
    split_right: _types_pb2.RangeDescriptor
    def __init__(self, range_id: _Optional[int] = ..., txn: _Optional[_Union[_types_pb2.TxnMeta, _Mapping]] = ..., status: _Optional[_Union[_types_pb2.TxnStatus, str]] = ..., split_left: _Optional[_Union[_types_pb2.RangeDescriptor, _Mapping]] = ..., split_right: _Optional[_Union[_types_pb2.RangeDescriptor, _Mapping]] = ...) -> None: ...

class EndTxnResponse(_message.Message):
    __slots__ = ("record", "error")
    RECORD_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    record: _types_pb2.TxnRecord
    error: _errors_pb2.ReplicaError
    def __init__(self, record: _Optional[_Union[_types_pb2.TxnRecord, _Mapping]] = ..., error: _Optional[_Union[_errors_pb2.ReplicaError, _Mapping]] = ...) -> None: ...
