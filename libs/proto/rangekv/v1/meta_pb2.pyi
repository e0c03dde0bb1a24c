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

class LookupMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    LOOKUP_MODE_UNSPECIFIED: _ClassVar[LookupMode]
    LOOKUP_MODE_CONSISTENT: _ClassVar[LookupMode]
    LOOKUP_MODE_INCONSISTENT: _ClassVar[LookupMode]

class IdKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ID_KIND_UNSPECIFIED: _ClassVar[IdKind]
    ID_KIND_RANGE: _ClassVar[IdKind]
    ID_KIND_NODE: _ClassVar[IdKind]

class NodeState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    NODE_STATE_UNSPECIFIED: _ClassVar[NodeState]
    NODE_STATE_ACTIVE: _ClassVar[NodeState]
    NODE_STATE_DECOMMISSIONING: _ClassVar[NodeState]
    NODE_STATE_DECOMMISSIONED: _ClassVar[NodeState]
LOOKUP_MODE_UNSPECIFIED: LookupMode
LOOKUP_MODE_CONSISTENT: LookupMode
LOOKUP_MODE_INCONSISTENT: LookupMode
ID_KIND_UNSPECIFIED: IdKind
ID_KIND_RANGE: IdKind
ID_KIND_NODE: IdKind
NODE_STATE_UNSPECIFIED: NodeState
NODE_STATE_ACTIVE: NodeState
NODE_STATE_DECOMMISSIONING: NodeState
NODE_STATE_DECOMMISSIONED: NodeState

class LookupRangeRequest(_message.Message):
    __slots__ = ("key", "prefetch", "mode", "include_intents")
    KEY_FIELD_NUMBER: _ClassVar[int]
    PREFETCH_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_INTENTS_FIELD_NUMBER: _ClassVar[int]
    key: bytes
    prefetch: int
    mode: LookupMode
    include_intents: bool
    def __init__(self, key: _Optional[bytes] = ..., prefetch: _Optional[int] = ..., mode: _Optional[_Union[LookupMode, str]] = ..., include_intents: _Optional[bool] = ...) -> None: ...

class DescriptorIntent(_message.Message):
    __slots__ = ("meta_key", "descriptor", "txn")
    META_KEY_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTOR_FIELD_NUMBER: _ClassVar[int]
    TXN_FIELD_NUMBER: _ClassVar[int]
    meta_key: bytes
    descriptor: _types_pb2.RangeDescriptor
    txn: _types_pb2.TxnMeta
    def __init__(self, meta_key: _Optional[bytes] = ..., descriptor: _Optional[_Union[_types_pb2.RangeDescriptor, _Mapping]] = ..., txn: _Optional[_Union[_types_pb2.TxnMeta, _Mapping]] = ...) -> None: ...

class LookupRangeResponse(_message.Message):
    __slots__ = ("descriptors", "intents")
    DESCRIPTORS_FIELD_NUMBER: _ClassVar[int]
    INTENTS_FIELD_NUMBER: _ClassVar[int]
    descriptors: _containers.RepeatedCompositeFieldContainer[_types_pb2.RangeDescriptor]
    intents: _containers.RepeatedCompositeFieldContainer[DescriptorIntent]
    def __init__(self, descriptors: _Optional[_Iterable[_Union[_types_pb2.RangeDescriptor, _Mapping]]] = ..., intents: _Optional[_Iterable[_Union[DescriptorIntent, _Mapping]]] = ...) -> None: ...

class ListRangesRequest(_message.Message):
    __slots__ = ("start_key", "limit", "include_intents")
    START_KEY_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_INTENTS_FIELD_NUMBER: _ClassVar[int]
    start_key: bytes
    limit: int
    include_intents: bool
    def __init__(self, start_key: _Optional[bytes] = ..., limit: _Optional[int] = ..., include_intents: _Optional[bool] = ...) -> None: ...

class ListRangesResponse(_message.Message):
    __slots__ = ("descriptors", "intents")
    DESCRIPTORS_FIELD_NUMBER: _ClassVar[int]
    INTENTS_FIELD_NUMBER: _ClassVar[int]
    descriptors: _containers.RepeatedCompositeFieldContainer[_types_pb2.RangeDescriptor]
    intents: _containers.RepeatedCompositeFieldContainer[DescriptorIntent]
    def __init__(self, descriptors: _Optional[_Iterable[_Union[_types_pb2.RangeDescriptor, _Mapping]]] = ..., intents: _Optional[_Iterable[_Union[DescriptorIntent, _Mapping]]] = ...) -> None: ...

class WriteIntentRequest(_message.Message):
    __slots__ = ("txn", "descriptor", "expected", "expect_absent", "lock_key")
    TXN_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTOR_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_FIELD_NUMBER: _ClassVar[int]
    EXPECT_ABSENT_FIELD_NUMBER: _ClassVar[int]
    LOCK_KEY_FIELD_NUMBER: _ClassVar[int]
    txn: _types_pb2.TxnMeta
    descriptor: _types_pb2.RangeDescriptor
    expected: _types_pb2.RangeDescriptor
    expect_absent: bool
    lock_key: bytes
    def __init__(self, txn: _Optional[_Union[_types_pb2.TxnMeta, _Mapping]] = ..., descriptor: _Optional[_Union[_types_pb2.RangeDescriptor, _Mapping]] = ..., expected: _Optional[_Union[_types_pb2.RangeDescriptor, _Mapping]] = ..., expect_absent: _Optional[bool] = ..., lock_key: _Optional[bytes] = ...) -> None: ...

class WriteIntentResponse(_message.Message):
    __slots__ = ("meta_key",)
    META_KEY_FIELD_NUMBER: _ClassVar[int]
    meta_key: bytes
    def __init__(self, meta_key: _Optional[bytes] = ...) -> None: ...

class ResolveIntentRequest(_message.Message):
    __slots__ = ("meta_key", "txn_id", "status")
    META_KEY_FIELD_NUMBER: _ClassVar[int]
    TXN_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    meta_key: bytes
    txn_id: bytes
    status: _types_pb2.TxnStatus
    def __init__(self, meta_key: _Optional[bytes] = ..., txn_id: _Optional[bytes] = ..., status: _Optional[_Union[_types_pb2.TxnStatus, str]] = ...) -> None: ...

class ResolveIntentResponse(_message.Message):
    __slots__ = ("resolved",)
    RESOLVED_FIELD_NUMBER: _ClassVar[int]
    resolved: bool
    def __init__(self, resolved: _Optional[bool] = ...) -> None: ...

class AllocateIdsRequest(_message.Message):
    __slots__ = ("kind", "count")
    KIND_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    kind: IdKind
    count: int
    def __init__(self, kind: _Optional[_Union[IdKind, str]] = ..., count: _Optional[int] = ...) -> None: ...

class AllocateIdsResponse(_message.Message):
    __slots__ = ("first", "count")
    FIRST_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    first: int
    count: int
    def __init__(self, first: _Optional[int] = ..., count: _Optional[int] = ...) -> None: ...

class HeartbeatRequest(_message.Message):
    __slots__ = ("node",)
    NODE_FIELD_NUMBER: _ClassVar[int]
    node: _types_pb2.NodeDescriptor
    def __init__(self, node: _Optional[_Union[_types_pb2.NodeDescriptor, _Mapping]] = ...) -> None: ...

class HeartbeatResponse(_message.Message):
    __slots__ = ("liveness_ttl",)
    LIVENESS_TTL_FIELD_NUMBER: _ClassVar[int]
    liveness_ttl: _duration_pb2.Duration
    def __init__(self, liveness_ttl: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class ListNodesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class NodeStatus(_message.Message):
    __slots__ = ("node", "live", "last_heartbeat_wall_time", "state")
    NODE_FIELD_NUMBER: _ClassVar[int]
    LIVE_FIELD_NUMBER: _ClassVar[int]
    LAST_HEARTBEAT_WALL_TIME_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    node: _types_pb2.NodeDescriptor
    live: bool
    last_heartbeat_wall_time: int
    state: NodeState
    def __init__(self, node: _Optional[_Union[_types_pb2.NodeDescriptor, _Mapping]] = ..., live: _Optional[bool] = ..., last_heartbeat_wall_time: _Optional[int] = ..., state: _Optional[_Union[NodeState, str]] = ...) -> None: ...

class ListNodesResponse(_message.Message):
    __slots__ = ("nodes",)
    NODES_FIELD_NUMBER: _ClassVar[int]
    nodes: _containers.RepeatedCompositeFieldContainer[NodeStatus]
    def __init__(self, nodes: _Optional[_Iterable[_Union[NodeStatus, _Mapping]]] = ...) -> None: ...

class ClusterInfoRequest(_message.Message):
    __slots__ = ("checksum",)
    CHECKSUM_FIELD_NUMBER: _ClassVar[int]
    checksum: bool
    def __init__(self, checksum: _Optional[bool] = ...) -> None: ...

class ClusterInfoResponse(_message.Message):
    __slots__ = ("bootstrapped", "leader_node_id", "leader_address", "first_range", "checksum")
    BOOTSTRAPPED_FIELD_NUMBER: _ClassVar[int]
    LEADER_NODE_ID_FIELD_NUMBER: _ClassVar[int]
    LEADER_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    FIRST_RANGE_FIELD_NUMBER: _ClassVar[int]
    CHECKSUM_FIELD_NUMBER: _ClassVar[int]
    bootstrapped: bool
    leader_node_id: int
    leader_address: str
    first_range: _types_pb2.RangeDescriptor
    checksum: _types_pb2.StateChecksum
    def __init__(self, bootstrapped: _Optional[bool] = ..., leader_node_id: _Optional[int] = ..., leader_address: _Optional[str] = ..., first_range: _Optional[_Union[_types_pb2.RangeDescriptor, _Mapping]] = ..., checksum: _Optional[_Union[_types_pb2.StateChecksum, _Mapping]] = ...) -> None: ...

class DecommissionRequest(_message.Message):
    __slots__ = ("node_id",)
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    node_id: int
    def __init__(self, node_id: _Optional[int] = ...) -> None: ...

class DecommissionResponse(_message.Message):
    __slots__ = ("node", "replicas", "range_ids")
    NODE_FIELD_NUMBER: _ClassVar[int]
    REPLICAS_FIELD_NUMBER: _ClassVar[int]
    RANGE_IDS_FIELD_NUMBER: _ClassVar[int]
    node: NodeStatus
    replicas: int
    range_ids: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, node: _Optional[_Union[NodeStatus, _Mapping]] = ..., replicas: _Optional[int] = ..., range_ids: _Optional[_Iterable[int]] = ...) -> None: ...

class RecommissionRequest(_message.Message):
    __slots__ = ("node_id",)
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    node_id: int
    def __init__(self, node_id: _Optional[int] = ...) -> None: ...

class RecommissionResponse(_message.Message):
    __slots__ = ("node",)
    NODE_FIELD_NUMBER: _ClassVar[int]
    node: NodeStatus
    def __init__(self, node: _Optional[_Union[NodeStatus, _Mapping]] = ...) -> None: ...
