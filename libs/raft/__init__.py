"""rangekv.raft: a pure, deterministic Raft core (see OVERVIEW.md for the contract).

Drive a node with `RawNode(config, storage)`: feed it ticks, peer messages and
proposals, then act on each `Ready` (persist, send, apply) and `advance`.
"""

from .errors import (
    Compacted,
    InvariantViolation,
    ProposalDropped,
    RaftError,
    SnapshotOutOfDate,
    SnapshotTemporarilyUnavailable,
    StepLocalMessage,
    StorageError,
    Unavailable,
)
from .rawnode import RawNode
from .storage import MemoryStorage, Storage, with_commit_floor
from .types import (
    NONE,
    ConfChange,
    ConfChangeType,
    Config,
    ConfState,
    Entry,
    EntryType,
    HardState,
    LeaseState,
    LeaseStatus,
    Message,
    MessageType,
    ProgressState,
    ProgressStatus,
    ReadState,
    Ready,
    Snapshot,
    SnapshotMetadata,
    SoftState,
    StateType,
    Status,
)

__all__ = [
    "NONE",
    "Compacted",
    "ConfChange",
    "ConfChangeType",
    "ConfState",
    "Config",
    "Entry",
    "EntryType",
    "HardState",
    "InvariantViolation",
    "LeaseState",
    "LeaseStatus",
    "MemoryStorage",
    "Message",
    "MessageType",
    "ProgressState",
    "ProgressStatus",
    "ProposalDropped",
    "RaftError",
    "RawNode",
    "ReadState",
    "Ready",
    "Snapshot",
    "SnapshotMetadata",
    "SnapshotOutOfDate",
    "SnapshotTemporarilyUnavailable",
    "SoftState",
    "StateType",
    "Status",
    "StepLocalMessage",
    "Storage",
    "StorageError",
    "Unavailable",
    "with_commit_floor",
]
