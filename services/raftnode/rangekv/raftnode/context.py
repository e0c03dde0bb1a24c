"""What every replica of a storage node shares: its context, and the counters it reports to.

`ReplicaContext` is built once by the store and handed to each `RangeReplica`:
the node's id, its `GroupHost` (engines and scheduler), its hybrid clock and
`Clock`, the replica limits, how node ids resolve to addresses, and the hooks by
which an apply reaches the store (split trigger, replica change). The counters
are Protocols: telemetry gives the exported ones, tests the in-memory ones here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from opentelemetry import trace

from rangekv.common.clock import Clock
from rangekv.common.descriptors import RangeDescriptor
from rangekv.common.hlc import HybridClock
from rangekv.raftnode.requests import ReplicaLimits
from rangekv.replication.host import GroupHost
from rangekv.replication.state_engine import StateBatch, StateEngine

if TYPE_CHECKING:
    from rangekv.raftnode.replica import RangeReplica

__all__ = [
    "ReadCounter",
    "ReadOutcomeCounter",
    "RefusalCounter",
    "Refusals",
    "ReplicaContext",
]


class ReadCounter(Protocol):
    """Counts consistent reads by outcome: hit | readindex | not_leader."""

    def add(self, outcome: str) -> None: ...


class ReadOutcomeCounter:
    """An in-memory ReadCounter (telemetry provides the exported one)."""

    def __init__(self) -> None:
        self.counts = {"hit": 0, "readindex": 0, "not_leader": 0}

    def add(self, outcome: str) -> None:
        self.counts[outcome] += 1


class RefusalCounter(Protocol):
    """Counts requests refused on purpose, by reason: clock_offset | overloaded | fence_lost."""

    def add(self, reason: str) -> None: ...


class Refusals:
    """An in-memory RefusalCounter (telemetry provides the exported one)."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}

    def add(self, reason: str) -> None:
        self.counts[reason] = self.counts.get(reason, 0) + 1


@dataclass
class ReplicaContext:
    """What every replica of a node shares."""

    node_id: int
    host: GroupHost
    hlc: HybridClock
    limits: ReplicaLimits
    resolve_address: Callable[[int], str]
    clock: Clock
    reads: ReadCounter | None = None
    refusals: RefusalCounter = field(default_factory=Refusals)
    on_leader_change: Callable[[], None] | None = None
    #: Called (inside apply) when a split trigger narrows `replica` to `left`:
    #: the store writes the right-hand range's initial state into `batch` and
    #: creates its raft group once the batch is durable.
    on_split: (
        Callable[[RangeReplica, RangeDescriptor, RangeDescriptor, StateBatch], None] | None
    ) = None
    #: The descriptor of this node's replica holding a key, if any (for
    #: RangeKeyMismatch answers that name the right-hand side of a split).
    descriptor_for_key: Callable[[bytes], RangeDescriptor | None] | None = None
    #: Called (inside apply) when a replica change installs a new descriptor:
    #: the store refreshes the raft snapshot metadata (so a snapshot names a
    #: new learner) and destroys a replica that was removed.
    on_replica_change: Callable[[RangeReplica, RangeDescriptor], None] | None = None
    #: Ids of the replica change transactions this node coordinates right now:
    #: a push never aborts them (see rangekv.raftnode.change).
    active_txns: set[bytes] = field(default_factory=set)
    #: None unless tracing is on (Telemetry.active_tracer).
    tracer: trace.Tracer | None = None

    @property
    def engine(self) -> StateEngine:
        return self.host.state_engine
