"""The Storage protocol the Raft core reads its stable log through, and an in-memory twin.

The core never writes storage: the driver persists what a Ready hands it and
then calls `advance`. Storage only has to answer reads about what the driver
has already made durable. `MemoryStorage` keeps everything in a Python list
whose slot 0 is a dummy entry standing for the latest snapshot, so
`first_index() == snapshot index + 1` always holds, even before any entry.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from .errors import Compacted, InvariantViolation, SnapshotOutOfDate, Unavailable
from .types import ConfState, Entry, HardState, Snapshot, SnapshotMetadata


def limit_size(ents: list[Entry], max_size: int) -> list[Entry]:
    """Longest prefix of `ents` whose data fits in `max_size` bytes, but never empty.

    The first entry is always kept so that an oversized entry still makes
    progress (one entry per message) instead of wedging replication.
    """
    if len(ents) <= 1:
        return ents
    size = 0
    for n, e in enumerate(ents):
        size += len(e.data)
        if size > max_size and n > 0:
            return ents[:n]
    return ents


class Storage(Protocol):
    """Read access to the durable part of a node's log."""

    def initial_state(self) -> tuple[HardState, ConfState]:
        """The persisted HardState and membership, read once at start."""
        ...

    def entries(self, lo: int, hi: int, max_size: int) -> list[Entry]:
        """Entries [lo, hi) limited to `max_size` bytes (at least one entry).

        Raises Compacted if lo <= the snapshot index, Unavailable if hi > last_index()+1.
        """
        ...

    def term(self, i: int) -> int:
        """Term of entry i; i may equal the snapshot index (first_index()-1)."""
        ...

    def first_index(self) -> int:
        """Index of the first entry still available (snapshot index + 1)."""
        ...

    def last_index(self) -> int:
        """Index of the last entry held."""
        ...

    def snapshot(self) -> Snapshot:
        """The most recent snapshot (may raise SnapshotTemporarilyUnavailable)."""
        ...


def with_commit_floor(hs: HardState, snapshot_index: int) -> HardState:
    """`hs` with its commit index raised to `snapshot_index` if it is below it.

    Invariant: snapshot index <= commit index, because a snapshot covers only
    committed entries. A driver may persist a commit-only hard state lazily
    (without fsync) while it persists a snapshot made by log truncation
    durably, so what is read back can break the invariant; every Storage
    reports the repaired state, and the core never starts below its snapshot.
    """
    if hs.commit >= snapshot_index:
        return hs
    return HardState(hs.term, hs.vote, snapshot_index)


class MemoryStorage:
    """In-memory Storage, used by tests, the simulator and the benchmark.

    Invariant: `_ents[0]` is a dummy entry with the snapshot's (index, term);
    `_ents[k].index == _ents[0].index + k` for every k.
    """

    __slots__ = ("_ents", "_hard_state", "_snapshot")

    def __init__(self, conf_state: ConfState | None = None) -> None:
        self._hard_state = HardState()
        self._snapshot = Snapshot(SnapshotMetadata(0, 0, conf_state or ConfState()))
        self._ents: list[Entry] = [Entry(0, 0)]

    # -- Storage protocol -------------------------------------------------

    def initial_state(self) -> tuple[HardState, ConfState]:
        meta = self._snapshot.metadata
        return with_commit_floor(self._hard_state, meta.index), meta.conf_state

    def entries(self, lo: int, hi: int, max_size: int) -> list[Entry]:
        offset = self._ents[0].index
        if lo <= offset:
            raise Compacted(f"entries from {lo}: compacted up to {offset}")
        if hi > self.last_index() + 1:
            raise Unavailable(f"entries up to {hi}: last index is {self.last_index()}")
        return limit_size(self._ents[lo - offset : hi - offset], max_size)

    def term(self, i: int) -> int:
        offset = self._ents[0].index
        if i < offset:
            raise Compacted(f"term of {i}: compacted up to {offset}")
        if i - offset >= len(self._ents):
            raise Unavailable(f"term of {i}: last index is {self.last_index()}")
        return self._ents[i - offset].term

    def first_index(self) -> int:
        return self._ents[0].index + 1

    def last_index(self) -> int:
        return self._ents[0].index + len(self._ents) - 1

    def snapshot(self) -> Snapshot:
        return self._snapshot

    # -- driver-side mutation --------------------------------------------

    @property
    def hard_state(self) -> HardState:
        return self._hard_state

    def set_hard_state(self, hs: HardState) -> None:
        self._hard_state = hs

    def apply_snapshot(self, snap: Snapshot) -> None:
        """Replace the whole log by `snap` (a follower catching up via SNAP)."""
        if snap.index <= self._snapshot.index:
            raise SnapshotOutOfDate(f"snapshot {snap.index} <= held {self._snapshot.index}")
        self._snapshot = snap
        self._ents = [Entry(snap.term, snap.index)]

    def create_snapshot(self, index: int, conf_state: ConfState, data: bytes) -> Snapshot:
        """Record a snapshot of the state machine as of `index` (<= last index)."""
        if index <= self._snapshot.index:
            raise SnapshotOutOfDate(f"snapshot {index} <= held {self._snapshot.index}")
        if index > self.last_index():
            raise Unavailable(f"snapshot {index} beyond last index {self.last_index()}")
        meta = SnapshotMetadata(index, self.term(index), conf_state)
        self._snapshot = Snapshot(meta, data)
        return self._snapshot

    def compact(self, index: int) -> None:
        """Drop entries up to and including `index`; the caller snapshotted them first."""
        offset = self._ents[0].index
        if index <= offset:
            raise Compacted(f"compact {index}: already compacted up to {offset}")
        if index > self.last_index():
            raise Unavailable(f"compact {index}: last index is {self.last_index()}")
        k = index - offset
        self._ents = [Entry(self._ents[k].term, index), *self._ents[k + 1 :]]

    def append(self, entries: Sequence[Entry]) -> None:
        """Persist `entries`, truncating any conflicting suffix they replace."""
        if not entries:
            return
        first = self.first_index()
        if entries[-1].index < first:
            return  # entirely covered by the snapshot already
        if entries[0].index < first:
            entries = entries[first - entries[0].index :]
        k = entries[0].index - self._ents[0].index
        n = len(self._ents)
        if k == n:
            self._ents.extend(entries)
        elif k < n:
            del self._ents[k:]
            self._ents.extend(entries)
        else:
            raise InvariantViolation(
                f"append at {entries[0].index} leaves a gap after last index {self.last_index()}"
            )
