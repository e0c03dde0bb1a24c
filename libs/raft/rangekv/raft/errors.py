"""Exceptions raised by the Raft core.

The tree, so callers can catch at the level they care about::

    RaftError                          anything this package raises on purpose
    ├── ProposalDropped                a proposal / conf change was refused; retry elsewhere or later
    ├── CampaignRefused                a driver's (unforced) campaign could break a lease this node backs
    ├── StepLocalMessage               RawNode.step got a message type that never crosses the wire
    ├── InvariantViolation             the log contradicts itself (a bug or corrupted storage)
    └── StorageError                   Storage could not serve a request
        ├── Compacted                  the index lies below the first retained index
        ├── Unavailable                the index lies beyond the last index
        ├── SnapshotOutOfDate          the snapshot is not newer than the one held
        └── SnapshotTemporarilyUnavailable  the snapshot is being built; ask again later

`ProposalDropped` is the only one a healthy cluster raises in normal operation
(leader changes, transfers, back-pressure); `InvariantViolation` should never
be caught and swallowed: continuing after it risks losing committed data.
"""

from __future__ import annotations


class RaftError(Exception):
    """Root of every exception this package raises deliberately."""


class ProposalDropped(RaftError):
    """A proposal was not accepted into the log.

    Raised when this node is not the leader, a leadership transfer is in
    flight, the uncommitted-size limit is reached, or (for conf changes)
    another conf change is still pending.
    """


class UncommittedSizeExceeded(ProposalDropped):
    """The leader's uncommitted entries already hold `max_uncommitted_entries_size`
    bytes: the proposal is refused until commits catch up (back-pressure, not a
    leadership problem; nothing entered the log)."""


class CampaignRefused(RaftError):
    """`RawNode.campaign()` (not forced) was refused: this node may have acknowledged
    a leader's lease round less than an election timeout ago, and an election it
    started now could end that lease early (see Raft.campaign_refusal)."""


class StepLocalMessage(RaftError):
    """A local-only message type (HUP, BEAT, ...) was handed to RawNode.step."""


class InvariantViolation(RaftError):
    """The replicated log broke one of its invariants (e.g. commit beyond last index)."""


class StorageError(RaftError):
    """Storage could not serve the requested range."""


class Compacted(StorageError):
    """The requested index precedes the first index still held (it was compacted)."""


class Unavailable(StorageError):
    """The requested index is beyond the last index held."""


class SnapshotOutOfDate(StorageError):
    """The offered snapshot is not newer than the one already held."""


class SnapshotTemporarilyUnavailable(StorageError):
    """A snapshot is not ready yet; the leader retries on a later round."""
