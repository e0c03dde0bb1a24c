from rangekv.v1 import meta_pb2 as _meta_pb2
from rangekv.v1 import replica_pb2 as _replica_pb2
from rangekv.v1 import types_pb2 as _types_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class AdminListRangesRequest(_message.Message):
    __slots__ = ("start_key", "limit")
    START_KEY_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    start_key: bytes
    limit: int
    def __init__(self, start_key: _Optional[bytes] = ..., limit: _Optional[int] = ...) -> None: ...

class RangeStatus(_message.Message):
    __slots__ = ("descriptor", "leaseholder_node_id", "lease_valid", "lease_sequence", "applied_index", "approximate_size_bytes")
    DESCRIPTOR_FIELD_NUMBER: _ClassVar[int]
    LEASEHOLDER_NODE_ID_FIELD_NUMBER: _ClassVar[int]
    LEASE_VALID_FIELD_NUMBER: _ClassVar[int]
    LEASE_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    APPLIED_INDEX_FIELD_NUMBER: _ClassVar[int]
    APPROXIMATE_SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    descriptor: _types_pb2.RangeDescriptor
    leaseholder_node_id: int
    lease_valid: bool
    lease_sequence: int
    applied_index: int
    approximate_size_bytes: int
    def __init__(self, descriptor: _Optional[_Union[_types_pb2.RangeDescriptor, _Mapping]] = ..., leaseholder_node_id: _Optional[int] = ..., lease_valid: _Optional[bool] = ..., lease_sequence: _Optional[int] = ..., applied_index: _Optional[int] = ..., approximate_size_bytes: _Optional[int] = ...) -> None: ...

class UnreachableNode(_message.Message):
    __slots__ = ("node_id", "address", "error")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    node_id: int
    address: str
    error: str
    def __init__(self, node_id: _Optional[int] = ..., address: _Optional[str] = ..., error: _Optional[str] = ...) -> None: ...

class AdminListRangesResponse(_message.Message):
    __slots__ = ("ranges", "next_start_key", "unreachable_nodes")
    RANGES_FIELD_NUMBER: _ClassVar[int]
    NEXT_START_KEY_FIELD_NUMBER: _ClassVar[int]
    UNREACHABLE_NODES_FIELD_NUMBER: _ClassVar[int]
    ranges: _containers.RepeatedCompositeFieldContainer[RangeStatus]
    next_start_key: bytes
    unreachable_nodes: _containers.RepeatedCompositeFieldContainer[UnreachableNode]
    def __init__(self, ranges: _Optional[_Iterable[_Union[RangeStatus, _Mapping]]] = ..., next_start_key: _Optional[bytes] = ..., unreachable_nodes: _Optional[_Iterable[_Union[UnreachableNode, _Mapping]]] = ...) -> None: ...

class AdminListNodesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class NodeSummary(_message.Message):
    __slots__ = ("status", "reachable", "error", "replica_count", "lease_count")
    STATUS_FIELD_NUMBER: _ClassVar[int]
    REACHABLE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    REPLICA_COUNT_FIELD_NUMBER: _ClassVar[int]
    LEASE_COUNT_FIELD_NUMBER: _ClassVar[int]
    status: _meta_pb2.NodeStatus
    reachable: bool
    error: str
    replica_count: int
    lease_count: int
    def __init__(self, status: _Optional[_Union[_meta_pb2.NodeStatus, _Mapping]] = ..., reachable: _Optional[bool] = ..., error: _Optional[str] = ..., replica_count: _Optional[int] = ..., lease_count: _Optional[int] = ...) -> None: ...

class AdminListNodesResponse(_message.Message):
    __slots__ = ("nodes",)
    NODES_FIELD_NUMBER: _ClassVar[int]
    nodes: _containers.RepeatedCompositeFieldContainer[NodeSummary]
    def __init__(self, nodes: _Optional[_Iterable[_Union[NodeSummary, _Mapping]]] = ...) -> None: ...

class AdminSplitRangeRequest(_message.Message):
    __slots__ = ("split_key", "more_split_keys")
    SPLIT_KEY_FIELD_NUMBER: _ClassVar[int]
    MORE_SPLIT_KEYS_FIELD_NUMBER: _ClassVar[int]
    split_key: bytes
    more_split_keys: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, split_key: _Optional[bytes] = ..., more_split_keys: _Optional[_Iterable[bytes]] = ...) -> None: ...

class AdminSplitRangeResponse(_message.Message):
    __slots__ = ("left", "right", "splits")
    LEFT_FIELD_NUMBER: _ClassVar[int]
    RIGHT_FIELD_NUMBER: _ClassVar[int]
    SPLITS_FIELD_NUMBER: _ClassVar[int]
    left: _types_pb2.RangeDescriptor
    right: _types_pb2.RangeDescriptor
    splits: _containers.RepeatedCompositeFieldContainer[AdminSplit]
    def __init__(self, left: _Optional[_Union[_types_pb2.RangeDescriptor, _Mapping]] = ..., right: _Optional[_Union[_types_pb2.RangeDescriptor, _Mapping]] = ..., splits: _Optional[_Iterable[_Union[AdminSplit, _Mapping]]] = ...) -> None: ...

class AdminSplit(_message.Message):
    __slots__ = ("split_key", "left", "right")
    SPLIT_KEY_FIELD_NUMBER: _ClassVar[int]
    LEFT_FIELD_NUMBER: _ClassVar[int]
    RIGHT_FIELD_NUMBER: _ClassVar[int]
    split_key: bytes
    left: _types_pb2.RangeDescriptor
    right: _types_pb2.RangeDescriptor
    def __init__(self, split_key: _Optional[bytes] = ..., left: _Optional[_Union[_types_pb2.RangeDescriptor, _Mapping]] = ..., right: _Optional[_Union[_types_pb2.RangeDescriptor, _Mapping]] = ...) -> None: ...

class AdminTransferLeaseRequest(_message.Message):
    __slots__ = ("range_id", "target_node_id")
    RANGE_ID_FIELD_NUMBER: _ClassVar[int]
    TARGET_NODE_ID_FIELD_NUMBER: _ClassVar[int]
    range_id: int
    target_node_id: int
    def __init__(self, range_id: _Optional[int] = ..., target_node_id: _Optional[int] = ...) -> None: ...

class AdminTransferLeaseResponse(_message.Message):
    __slots__ = ("range_id", "from_node_id", "to_node_id", "moved", "lease_sequence")
    RANGE_ID_FIELD_NUMBER: _ClassVar[int]
    FROM_NODE_ID_FIELD_NUMBER: _ClassVar[int]
    TO_NODE_ID_FIELD_NUMBER: _ClassVar[int]
    MOVED_FIELD_NUMBER: _ClassVar[int]
    LEASE_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    range_id: int
    from_node_id: int
    to_node_id: int
    moved: bool
    lease_sequence: int
    def __init__(self, range_id: _Optional[int] = ..., from_node_id: _Optional[int] = ..., to_node_id: _Optional[int] = ..., moved: _Optional[bool] = ..., lease_sequence: _Optional[int] = ...) -> None: ...

class AdminChangeReplicasRequest(_message.Message):
    __slots__ = ("range_id", "changes", "expected_generation")
    RANGE_ID_FIELD_NUMBER: _ClassVar[int]
    CHANGES_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_GENERATION_FIELD_NUMBER: _ClassVar[int]
    range_id: int
    changes: _containers.RepeatedCompositeFieldContainer[_replica_pb2.ReplicaChange]
    expected_generation: int
    def __init__(self, range_id: _Optional[int] = ..., changes: _Optional[_Iterable[_Union[_replica_pb2.ReplicaChange, _Mapping]]] = ..., expected_generation: _Optional[int] = ...) -> None: ...

class AdminChangeReplicasResponse(_message.Message):
    __slots__ = ("descriptor",)
    DESCRIPTOR_FIELD_NUMBER: _ClassVar[int]
    descriptor: _types_pb2.RangeDescriptor
    def __init__(self, descriptor: _Optional[_Union[_types_pb2.RangeDescriptor, _Mapping]] = ...) -> None: ...

class AdminDecommissionRequest(_message.Message):
    __slots__ = ("node_id",)
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    node_id: int
    def __init__(self, node_id: _Optional[int] = ...) -> None: ...

class AdminDecommissionResponse(_message.Message):
    __slots__ = ("status", "replicas_remaining")
    STATUS_FIELD_NUMBER: _ClassVar[int]
    REPLICAS_REMAINING_FIELD_NUMBER: _ClassVar[int]
    status: _meta_pb2.NodeStatus
    replicas_remaining: int
    def __init__(self, status: _Optional[_Union[_meta_pb2.NodeStatus, _Mapping]] = ..., replicas_remaining: _Optional[int] = ...) -> None: ...

class AdminRecommissionRequest(_message.Message):
    __slots__ = ("node_id",)
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    node_id: int
    def __init__(self, node_id: _Optional[int] = ...) -> None: ...

class AdminRecommissionResponse(_message.Message):
    __slots__ = ("status",)
    STATUS_FIELD_NUMBER: _ClassVar[int]
    status: _meta_pb2.NodeStatus
    def __init__(self, status: _Optional[_Union[_meta_pb2.NodeStatus, _Mapping]] = ...) -> None: ...
