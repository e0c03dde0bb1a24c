"""What a raft group applies its log into: the `StateMachine` seam.

A `RaftGroup` (group.py) drives a RawNode; what its committed entries MEAN is
the state machine's business: a range's MVCC data and transaction records
(`rangekv.raftnode.range_state`), the meta range's descriptors and registry
(`rangekv.metarange.state`). The group hands it each committed entry into the
scheduler's shared `StateBatch`, in log order, on every replica alike.

Rules an implementation keeps:

* deterministic: the result depends on the entry and the batch's view only --
  no clock, no randomness, no I/O except through the batch;
* never raises for what a command says: a committed entry applies on every
  replica, so a command that cannot take effect is refused by VALUE (the
  proposer's future gets the returned exception), and the entries after it
  still apply;
* the applied index rides in the same batch as the effects (`record_applied`),
  so a replay after a crash starts exactly where the durable state ends.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from rangekv.raft import ConfChange
from rangekv.replication.state_engine import StateBatch

__all__ = ["Span", "StateMachine"]

#: A span of state-engine keys [start, end); `end=None` is unbounded.
Span = tuple[bytes, bytes | None]


class StateMachine(Protocol):
    """The meaning of one raft group's log (see the module docstring for the rules)."""

    def apply_command(self, index: int, command: bytes, batch: StateBatch) -> object:
        """Apply the committed command at `index` into `batch`; return what its
        proposer's future gets (an exception value fails it)."""
        ...

    def apply_conf_change(self, index: int, cc: ConfChange, batch: StateBatch) -> None:
        """State effects of a committed membership change (the raft core already
        changed its configuration)."""
        ...

    def record_applied(self, index: int, term: int, batch: StateBatch) -> None:
        """Write the applied index (and its entry's term) into `batch`, beside the effects."""
        ...

    def snapshot_spans(self) -> list[Span]:
        """The state-engine spans a snapshot of this state machine consists of."""
        ...

    def snapshot_installed(self, local: Mapping[bytes, bytes]) -> None:
        """A streamed snapshot replaced the state: reload what is kept in memory
        (`local`: the streamed range-local pairs, e.g. descriptor, GC threshold)."""
        ...
