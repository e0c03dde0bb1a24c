"""Value types exchanged between the Raft core and its driver.

Every value is a frozen, slotted dataclass: values are shared (not copied)
between the log, messages and Ready, which is only safe because nobody can
mutate them, and slots keep the per-entry cost of a hot replication path low.
"""

from __future__ import annotations

import enum
import struct
import sys
from dataclasses import dataclass, field
from typing import Final

#: A byte budget that never truncates: `limit_size` keeps every entry.
NO_LIMIT: Final = sys.maxsize

#: Node id 0 means "nobody" (no leader known, no vote cast).
NONE: Final = 0


class EntryType(enum.Enum):
    NORMAL = 0
    CONF_CHANGE = 1


class StateType(enum.Enum):
    FOLLOWER = 0
    CANDIDATE = 1
    LEADER = 2
    PRE_CANDIDATE = 3


class MessageType(enum.Enum):
    HUP = 0
    BEAT = 1
    PROP = 2
    APP = 3
    APP_RESP = 4
    VOTE = 5
    VOTE_RESP = 6
    PRE_VOTE = 7
    PRE_VOTE_RESP = 8
    SNAP = 9
    HEARTBEAT = 10
    HEARTBEAT_RESP = 11
    UNREACHABLE = 12
    SNAP_STATUS = 13
    CHECK_QUORUM = 14
    TRANSFER_LEADER = 15
    TIMEOUT_NOW = 16
    READ_INDEX = 17
    READ_INDEX_RESP = 18

    def is_local(self) -> bool:
        """True for types a node only ever sends to itself (never on the wire)."""
        return self in _LOCAL_TYPES

    def is_response(self) -> bool:
        """True for replies to a leader/candidate request."""
        return self in _RESPONSE_TYPES


_LOCAL_TYPES: Final = frozenset(
    {
        MessageType.HUP,
        MessageType.BEAT,
        MessageType.PROP,
        MessageType.UNREACHABLE,
        MessageType.SNAP_STATUS,
        MessageType.CHECK_QUORUM,
    }
)
_RESPONSE_TYPES: Final = frozenset(
    {
        MessageType.APP_RESP,
        MessageType.VOTE_RESP,
        MessageType.PRE_VOTE_RESP,
        MessageType.HEARTBEAT_RESP,
        MessageType.READ_INDEX_RESP,
    }
)


class ConfChangeType(enum.Enum):
    ADD_NODE = 0
    ADD_LEARNER = 1
    REMOVE_NODE = 2


class LeaseState(enum.Enum):
    VALID = 0
    EXPIRED = 1
    NOT_LEADER = 2
    NO_APPLIED_ENTRY_OF_TERM = 3
    TRANSFERRING = 4


class ProgressState(enum.Enum):
    """How the leader replicates to one follower (see progress.py)."""

    PROBE = 0
    REPLICATE = 1
    SNAPSHOT = 2


@dataclass(frozen=True, slots=True)
class Entry:
    term: int
    index: int
    type: EntryType = EntryType.NORMAL
    data: bytes = b""


@dataclass(frozen=True, slots=True)
class HardState:
    """What must be durable before any message that depends on it leaves."""

    term: int = 0
    vote: int = 0
    commit: int = 0


@dataclass(frozen=True, slots=True)
class SoftState:
    """Volatile role information; reported to the driver only when it changes."""

    lead: int
    raft_state: StateType


@dataclass(frozen=True, slots=True)
class ConfState:
    voters: tuple[int, ...] = ()
    learners: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class SnapshotMetadata:
    index: int = 0
    term: int = 0
    conf_state: ConfState = field(default_factory=ConfState)


@dataclass(frozen=True, slots=True)
class Snapshot:
    metadata: SnapshotMetadata = field(default_factory=SnapshotMetadata)
    data: bytes = b""

    @property
    def index(self) -> int:
        return self.metadata.index

    @property
    def term(self) -> int:
        return self.metadata.term

    def is_empty(self) -> bool:
        return self.metadata.index == 0


_CC_HEADER: Final = struct.Struct(">BQ")


@dataclass(frozen=True, slots=True)
class ConfChange:
    type: ConfChangeType
    node_id: int
    context: bytes = b""

    def encode(self) -> bytes:
        """Stable byte form stored in a CONF_CHANGE entry's data."""
        return _CC_HEADER.pack(self.type.value, self.node_id) + self.context

    @classmethod
    def decode(cls, data: bytes) -> ConfChange:
        kind, node_id = _CC_HEADER.unpack_from(data)
        return cls(ConfChangeType(kind), node_id, bytes(data[_CC_HEADER.size :]))


@dataclass(frozen=True, slots=True)
class Message:
    type: MessageType
    to: int
    sender: int
    term: int = 0
    log_term: int = 0
    index: int = 0
    entries: tuple[Entry, ...] = ()
    commit: int = 0
    snapshot: Snapshot | None = None
    reject: bool = False
    reject_hint: int = 0
    context: bytes = b""
    round: int = 0


@dataclass(frozen=True, slots=True)
class ReadState:
    """A linearizable read may be served once applied >= index."""

    index: int
    request_ctx: bytes


@dataclass(frozen=True, slots=True)
class Ready:
    """Everything the driver must persist, send and apply, in that order."""

    soft_state: SoftState | None
    hard_state: HardState | None
    entries: tuple[Entry, ...]
    snapshot: Snapshot | None
    committed_entries: tuple[Entry, ...]
    messages: tuple[Message, ...]
    read_states: tuple[ReadState, ...]
    must_sync: bool


@dataclass(frozen=True, slots=True)
class LeaseStatus:
    """Answer of `lease_status(now)`; `expires_at` is 0.0 when no quorum ack is held."""

    state: LeaseState
    lead: int
    term: int
    applied: int
    expires_at: float = 0.0


@dataclass(frozen=True, slots=True)
class ProgressStatus:
    match: int
    next: int
    state: ProgressState
    recent_active: bool
    paused: bool
    pending_snapshot: int
    is_learner: bool
    inflight: int


@dataclass(frozen=True, slots=True)
class Status:
    """A snapshot of a node's view; `progress` is filled only on the leader."""

    id: int
    term: int
    vote: int
    lead: int
    state: StateType
    commit: int
    applied: int
    lead_transferee: int
    progress: dict[int, ProgressStatus]


@dataclass(frozen=True, slots=True)
class Config:
    """Static parameters of one node; validated eagerly so mistakes fail at construction."""

    id: int
    election_tick: int = 10
    heartbeat_tick: int = 1
    applied: int = 0
    max_size_per_msg: int = 1 << 20
    max_inflight_msgs: int = 256
    max_uncommitted_entries_size: int = 0
    check_quorum: bool = True
    pre_vote: bool = True
    lease_duration: float = 0.0
    rng_seed: int = 0
    #: How a leader tells followers that its commit index moved. False (etcd's
    #: way): at once, with an append to every follower, empty if it has no new
    #: entries, which the follower answers. True: followers learn it from the
    #: next append (new entries carry the commit index) or heartbeat (every
    #: `heartbeat_tick` ticks), or at once when an entry proposed with
    #: `publish=True` commits or a membership change is applied. It halves the raft
    #: messages of a lone entry and changes nothing the leader decides.
    lazy_commit: bool = False
    #: Whether a heartbeat goes to a follower the leader sent an append since the
    #: previous heartbeat. False: every heartbeat interval, to every follower (etcd's
    #: way). True: a replicating follower with room in its window that was sent an
    #: append since the previous heartbeat AND answered that heartbeat's round (or a
    #: later one) is skipped (never at a leadership's first heartbeat), because the
    #: appends carry everything a heartbeat does: the term (the follower's election
    #: timer resets), the commit index and the newest lease round, so that their
    #: answers renew the lease (lease.py) and keep CheckQuorum content.
    #: For such followers the lease then rests on answers to appends; one whose
    #: answers stop (a backed-up append lane) is heartbeaten again at the next beat.
    #: A busy group sends almost no heartbeats; an idle group is unchanged. Drivers
    #: must leave two heartbeat intervals inside the election timeout and the lease.
    lazy_heartbeat: bool = False

    def __post_init__(self) -> None:
        if self.id <= NONE:
            raise ValueError("id must be a positive integer (0 means 'nobody')")
        if self.heartbeat_tick < 1:
            raise ValueError("heartbeat_tick must be >= 1")
        if self.election_tick <= self.heartbeat_tick:
            raise ValueError("election_tick must be greater than heartbeat_tick")
        if self.applied < 0:
            raise ValueError("applied must be >= 0")
        if self.max_size_per_msg < 0:
            raise ValueError("max_size_per_msg must be >= 0 (0 = one entry per message)")
        if self.max_inflight_msgs < 1:
            raise ValueError("max_inflight_msgs must be >= 1")
        if self.max_uncommitted_entries_size < 0:
            raise ValueError("max_uncommitted_entries_size must be >= 0 (0 = no limit)")
        if self.lease_duration < 0:
            raise ValueError("lease_duration must be >= 0 (0 disables leases)")
        if self.lease_duration > 0 and not self.check_quorum:
            # Without CheckQuorum followers never refuse votes on account of a
            # live leader, so an acked round proves nothing about the future.
            raise ValueError("lease_duration > 0 requires check_quorum=True")
