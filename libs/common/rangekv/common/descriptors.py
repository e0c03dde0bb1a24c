"""Range and replica descriptors as immutable values, and their wire form.

Every service handles descriptors: raftnode serves under one, metarange stores
them, the gateway caches them. Inside a process they are frozen dataclasses
(hashable, comparable, safe to share between cache entries); on the wire they
are ``rangekv.v1.RangeDescriptor``. The conversion lives here and nowhere else.

Keys are bytes; an empty ``end_key`` means "to the end of the keyspace".
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import cast

from rangekv.v1 import types_pb2


class ReplicaType(enum.IntEnum):
    """Whether a replica votes. Values are the wire enum's numbers."""

    VOTER = types_pb2.REPLICA_TYPE_VOTER
    LEARNER = types_pb2.REPLICA_TYPE_LEARNER


@dataclass(frozen=True, slots=True)
class ReplicaDescriptor:
    node_id: int
    replica_id: int
    type: ReplicaType = ReplicaType.VOTER

    def to_proto(self) -> types_pb2.ReplicaDescriptor:
        return types_pb2.ReplicaDescriptor(
            node_id=self.node_id,
            replica_id=self.replica_id,
            type=cast(types_pb2.ReplicaType, int(self.type)),
        )

    @staticmethod
    def from_proto(pb: types_pb2.ReplicaDescriptor) -> ReplicaDescriptor:
        kind = ReplicaType.LEARNER if pb.type == ReplicaType.LEARNER else ReplicaType.VOTER
        return ReplicaDescriptor(node_id=pb.node_id, replica_id=pb.replica_id, type=kind)


@dataclass(frozen=True, slots=True)
class RangeDescriptor:
    """The span ``[start_key, end_key)`` and the replicas that hold it.

    Invariant: ``start_key < end_key`` unless ``end_key`` is empty (unbounded).
    Of two overlapping descriptors the one with the higher ``generation`` is newer.
    """

    range_id: int
    start_key: bytes
    end_key: bytes
    replicas: tuple[ReplicaDescriptor, ...] = ()
    generation: int = 0
    next_replica_id: int = 1
    _voters: tuple[int, ...] = field(default=(), init=False, compare=False, repr=False)
    #: The hash, computed once (0: not yet): a descriptor keys the gateway's cache,
    #: which hashes it several times per routed operation, and hashing it anew means
    #: hashing every replica.
    _hash: int = field(default=0, init=False, compare=False, repr=False)

    def __hash__(self) -> int:
        h = self._hash
        if not h:
            h = hash(
                (
                    self.range_id,
                    self.start_key,
                    self.end_key,
                    self.replicas,
                    self.generation,
                    self.next_replica_id,
                )
            )
            object.__setattr__(self, "_hash", h)
        return h

    def __post_init__(self) -> None:
        if self.end_key and self.end_key <= self.start_key:
            raise ValueError(
                f"range {self.range_id}: end_key {self.end_key!r} <= start_key {self.start_key!r}"
            )
        voters = tuple(r.node_id for r in self.replicas if r.type == ReplicaType.VOTER)
        object.__setattr__(self, "_voters", voters)

    def contains_key(self, key: bytes) -> bool:
        return self.start_key <= key and (not self.end_key or key < self.end_key)

    def overlaps(self, start: bytes, end: bytes) -> bool:
        """Whether ``[start, end)`` (empty end = unbounded) shares a key with this range."""
        starts_before_our_end = not self.end_key or start < self.end_key
        ends_after_our_start = not end or end > self.start_key
        return starts_before_our_end and ends_after_our_start

    def replica_on(self, node_id: int) -> ReplicaDescriptor | None:
        for replica in self.replicas:
            if replica.node_id == node_id:
                return replica
        return None

    def replica_by_id(self, replica_id: int) -> ReplicaDescriptor | None:
        for replica in self.replicas:
            if replica.replica_id == replica_id:
                return replica
        return None

    @property
    def voter_node_ids(self) -> tuple[int, ...]:
        return self._voters

    def to_proto(self) -> types_pb2.RangeDescriptor:
        return types_pb2.RangeDescriptor(
            range_id=self.range_id,
            start_key=self.start_key,
            end_key=self.end_key,
            replicas=[r.to_proto() for r in self.replicas],
            generation=self.generation,
            next_replica_id=self.next_replica_id,
        )

    @staticmethod
    def from_proto(pb: types_pb2.RangeDescriptor) -> RangeDescriptor:
        return RangeDescriptor(
            range_id=pb.range_id,
            start_key=pb.start_key,
            end_key=pb.end_key,
            replicas=tuple(ReplicaDescriptor.from_proto(r) for r in pb.replicas),
            generation=pb.generation,
            next_replica_id=pb.next_replica_id,
        )


def first_range(node_ids: tuple[int, ...] | list[int]) -> RangeDescriptor:
    """The descriptor a new cluster starts with: range 1, the whole keyspace,
    one voter per initial node (replica id = node id). Metarange records it and
    the initial storage nodes create it; both derive it from here."""
    if not node_ids:
        raise ValueError("the first range needs at least one node")
    replicas = tuple(ReplicaDescriptor(n, n) for n in sorted(node_ids))
    return RangeDescriptor(
        range_id=1,
        start_key=b"",
        end_key=b"",
        replicas=replicas,
        generation=1,
        next_replica_id=max(node_ids) + 1,
    )
