import datetime

from google.protobuf import duration_pb2 as _duration_pb2
from rangekv.v1 import types_pb2 as _types_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class WriteOutcome(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    WRITE_OUTCOME_UNSPECIFIED: _ClassVar[WriteOutcome]
    WRITE_OUTCOME_NOT_APPLIED: _ClassVar[WriteOutcome]
    WRITE_OUTCOME_UNKNOWN: _ClassVar[WriteOutcome]
WRITE_OUTCOME_UNSPECIFIED: WriteOutcome
WRITE_OUTCOME_NOT_APPLIED: WriteOutcome
WRITE_OUTCOME_UNKNOWN: WriteOutcome

class NotLeaseHolderError(_message.Message):
    __slots__ = ("range_id", "leaseholder", "leaseholder_address", "lease_sequence", "descriptor")
    RANGE_ID_FIELD_NUMBER: _ClassVar[int]
    LEASEHOLDER_FIELD_NUMBER: _ClassVar[int]
    LEASEHOLDER_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    LEASE_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTOR_FIELD_NUMBER: _ClassVar[int]
    range_id: int
    leaseholder: _types_pb2.ReplicaDescriptor
    leaseholder_address: str
    lease_sequence: int
    descriptor: _types_pb2.RangeDescriptor
    def __init__(self, range_id: _Optional[int] = ..., leaseholder: _Optional[_Union[_types_pb2.ReplicaDescriptor, _Mapping]] = ..., leaseholder_address: _Optional[str] = ..., lease_sequence: _Optional[int] = ..., descriptor: _Optional[_Union[_types_pb2.RangeDescriptor, _Mapping]] = ...) -> None: ...

class RangeKeyMismatchError(_message.Message):
    __slots__ = ("requested_range_id", "descriptors")
    REQUESTED_RANGE_ID_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTORS_FIELD_NUMBER: _ClassVar[int]
    requested_range_id: int
    descriptors: _containers.RepeatedCompositeFieldContainer[_types_pb2.RangeDescriptor]
    def __init__(self, requested_range_id: _Optional[int] = ..., descriptors: _Optional[_Iterable[_Union[_types_pb2.RangeDescriptor, _Mapping]]] = ...) -> None: ...

class RangeNotFoundError(_message.Message):
    __slots__ = ("range_id", "node_id")
    RANGE_ID_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    range_id: int
    node_id: int
    def __init__(self, range_id: _Optional[int] = ..., node_id: _Optional[int] = ...) -> None: ...

class NotLeaderError(_message.Message):
    __slots__ = ("leader_node_id", "leader_address", "term")
    LEADER_NODE_ID_FIELD_NUMBER: _ClassVar[int]
    LEADER_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    TERM_FIELD_NUMBER: _ClassVar[int]
    leader_node_id: int
    leader_address: str
    term: int
    def __init__(self, leader_node_id: _Optional[int] = ..., leader_address: _Optional[str] = ..., term: _Optional[int] = ...) -> None: ...

class ConditionFailedError(_message.Message):
    __slots__ = ("key", "actual")
    KEY_FIELD_NUMBER: _ClassVar[int]
    ACTUAL_FIELD_NUMBER: _ClassVar[int]
    key: bytes
    actual: _types_pb2.RangeDescriptor
    def __init__(self, key: _Optional[bytes] = ..., actual: _Optional[_Union[_types_pb2.RangeDescriptor, _Mapping]] = ...) -> None: ...

class IntentExistsError(_message.Message):
    __slots__ = ("key", "txn")
    KEY_FIELD_NUMBER: _ClassVar[int]
    TXN_FIELD_NUMBER: _ClassVar[int]
    key: bytes
    txn: _types_pb2.TxnMeta
    def __init__(self, key: _Optional[bytes] = ..., txn: _Optional[_Union[_types_pb2.TxnMeta, _Mapping]] = ...) -> None: ...

class RequestOutcomeDetail(_message.Message):
    __slots__ = ("outcome",)
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    outcome: WriteOutcome
    def __init__(self, outcome: _Optional[_Union[WriteOutcome, str]] = ...) -> None: ...

class ReplicaError(_message.Message):
    __slots__ = ("not_lease_holder", "range_key_mismatch", "range_not_found", "unavailable", "invalid_argument", "intent_exists", "fence_lost", "clock_offset", "resource_exhausted")
    NOT_LEASE_HOLDER_FIELD_NUMBER: _ClassVar[int]
    RANGE_KEY_MISMATCH_FIELD_NUMBER: _ClassVar[int]
    RANGE_NOT_FOUND_FIELD_NUMBER: _ClassVar[int]
    UNAVAILABLE_FIELD_NUMBER: _ClassVar[int]
    INVALID_ARGUMENT_FIELD_NUMBER: _ClassVar[int]
    INTENT_EXISTS_FIELD_NUMBER: _ClassVar[int]
    FENCE_LOST_FIELD_NUMBER: _ClassVar[int]
    CLOCK_OFFSET_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_EXHAUSTED_FIELD_NUMBER: _ClassVar[int]
    not_lease_holder: NotLeaseHolderError
    range_key_mismatch: RangeKeyMismatchError
    range_not_found: RangeNotFoundError
    unavailable: UnavailableError
    invalid_argument: InvalidArgumentError
    intent_exists: IntentExistsError
    fence_lost: FenceLostError
    clock_offset: ClockOffsetError
    resource_exhausted: ResourceExhaustedError
    def __init__(self, not_lease_holder: _Optional[_Union[NotLeaseHolderError, _Mapping]] = ..., range_key_mismatch: _Optional[_Union[RangeKeyMismatchError, _Mapping]] = ..., range_not_found: _Optional[_Union[RangeNotFoundError, _Mapping]] = ..., unavailable: _Optional[_Union[UnavailableError, _Mapping]] = ..., invalid_argument: _Optional[_Union[InvalidArgumentError, _Mapping]] = ..., intent_exists: _Optional[_Union[IntentExistsError, _Mapping]] = ..., fence_lost: _Optional[_Union[FenceLostError, _Mapping]] = ..., clock_offset: _Optional[_Union[ClockOffsetError, _Mapping]] = ..., resource_exhausted: _Optional[_Union[ResourceExhaustedError, _Mapping]] = ...) -> None: ...

class FenceLostError(_message.Message):
    __slots__ = ("fence_id", "reason")
    FENCE_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    fence_id: bytes
    reason: str
    def __init__(self, fence_id: _Optional[bytes] = ..., reason: _Optional[str] = ...) -> None: ...

class ClockOffsetError(_message.Message):
    __slots__ = ("timestamp", "physical_nanos", "max_offset_nanos", "node_id")
    TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    PHYSICAL_NANOS_FIELD_NUMBER: _ClassVar[int]
    MAX_OFFSET_NANOS_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    timestamp: _types_pb2.Timestamp
    physical_nanos: int
    max_offset_nanos: int
    node_id: int
    def __init__(self, timestamp: _Optional[_Union[_types_pb2.Timestamp, _Mapping]] = ..., physical_nanos: _Optional[int] = ..., max_offset_nanos: _Optional[int] = ..., node_id: _Optional[int] = ...) -> None: ...

class ResourceExhaustedError(_message.Message):
    __slots__ = ("message", "retry_after", "answer_too_large")
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    RETRY_AFTER_FIELD_NUMBER: _ClassVar[int]
    ANSWER_TOO_LARGE_FIELD_NUMBER: _ClassVar[int]
    message: str
    retry_after: _duration_pb2.Duration
    answer_too_large: bool
    def __init__(self, message: _Optional[str] = ..., retry_after: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., answer_too_large: _Optional[bool] = ...) -> None: ...

class UnavailableError(_message.Message):
    __slots__ = ("message", "retry_after", "outcome")
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    RETRY_AFTER_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    message: str
    retry_after: _duration_pb2.Duration
    outcome: WriteOutcome
    def __init__(self, message: _Optional[str] = ..., retry_after: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., outcome: _Optional[_Union[WriteOutcome, str]] = ...) -> None: ...

class InvalidArgumentError(_message.Message):
    __slots__ = ("field", "message")
    FIELD_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    field: str
    message: str
    def __init__(self, field: _Optional[str] = ..., message: _Optional[str] = ...) -> None: ...
