"""The Raft log as one node sees it: a durable prefix in Storage plus an unstable tail.

Invariants kept here:
    first_index - 1 <= applied <= committed <= last_index
    unstable.offset == storage.last_index() + 1 whenever the driver is caught up
Entries reach Storage only through the driver (Ready.entries -> persist ->
advance -> `stable_to`); until then they live in `Unstable`.
"""

from __future__ import annotations

from collections.abc import Sequence

from .errors import Compacted, InvariantViolation, StorageError, Unavailable
from .storage import Storage, limit_size
from .types import NO_LIMIT, Entry, Snapshot


class Unstable:
    """Entries (and at most one snapshot) not yet persisted by the driver.

    Invariant: `entries[k].index == offset + k`; if a snapshot is pending,
    `offset == snapshot.index + 1`.
    """

    __slots__ = ("entries", "offset", "snapshot")

    def __init__(self, offset: int) -> None:
        self.snapshot: Snapshot | None = None
        self.entries: list[Entry] = []
        self.offset = offset

    def maybe_first_index(self) -> int | None:
        if self.snapshot is not None:
            return self.snapshot.index + 1
        return None

    def maybe_last_index(self) -> int | None:
        if self.entries:
            return self.offset + len(self.entries) - 1
        if self.snapshot is not None:
            return self.snapshot.index
        return None

    def maybe_term(self, i: int) -> int | None:
        if i < self.offset:
            if self.snapshot is not None and self.snapshot.index == i:
                return self.snapshot.term
            return None
        k = i - self.offset
        if k < len(self.entries):
            return self.entries[k].term
        return None

    def stable_to(self, i: int, t: int) -> None:
        # The term check matters: if the tail was replaced by a new leader's
        # entries after the Ready was taken, index i is not the entry persisted.
        if self.maybe_term(i) != t or i < self.offset:
            return
        del self.entries[: i + 1 - self.offset]
        self.offset = i + 1

    def stable_snap_to(self, i: int) -> None:
        if self.snapshot is not None and self.snapshot.index == i:
            self.snapshot = None

    def restore(self, snap: Snapshot) -> None:
        self.offset = snap.index + 1
        self.entries = []
        self.snapshot = snap

    def truncate_and_append(self, ents: Sequence[Entry]) -> None:
        after = ents[0].index
        end = self.offset + len(self.entries)
        if after == end:
            self.entries.extend(ents)
        elif after <= self.offset:
            # Replaces everything unstable (and, once persisted, part of storage).
            self.offset = after
            self.entries = list(ents)
        else:
            del self.entries[after - self.offset :]
            self.entries.extend(ents)

    def slice(self, lo: int, hi: int) -> list[Entry]:
        return self.entries[lo - self.offset : hi - self.offset]


class RaftLog:
    """Storage + Unstable, with commit/apply bookkeeping."""

    __slots__ = ("applied", "committed", "storage", "unstable")

    def __init__(self, storage: Storage) -> None:
        self.storage = storage
        first = storage.first_index()
        last = storage.last_index()
        self.unstable = Unstable(last + 1)
        # Everything up to the snapshot is committed and applied by definition.
        self.committed = first - 1
        self.applied = first - 1

    # -- bounds and terms -------------------------------------------------

    # first_index, last_index and term run many times per entry (every message
    # stepped and sent asks them): Unstable's maybe_* are inlined here.

    def first_index(self) -> int:
        snap = self.unstable.snapshot
        return snap.index + 1 if snap is not None else self.storage.first_index()

    def last_index(self) -> int:
        u = self.unstable
        if u.entries:
            return u.offset + len(u.entries) - 1
        if u.snapshot is not None:
            return u.snapshot.index
        return self.storage.last_index()

    def stable_last_index(self) -> int:
        """Last index the driver has persisted (what the leader may count for itself)."""
        return self.unstable.offset - 1

    def term(self, i: int) -> int:
        """Term of entry i; raises Compacted/Unavailable outside [first-1, last]."""
        u = self.unstable
        k = i - u.offset
        if k >= 0:
            if k < len(u.entries):
                return u.entries[k].term
        elif u.snapshot is not None and u.snapshot.index == i:
            return u.snapshot.term
        if i < self.first_index() - 1:
            raise Compacted(f"term of {i}: compacted")
        if i > self.last_index():
            raise Unavailable(f"term of {i}: beyond last index {self.last_index()}")
        return self.storage.term(i)

    def zero_term_on_error(self, i: int) -> int:
        try:
            return self.term(i)
        except StorageError:
            return 0

    def last_term(self) -> int:
        return self.term(self.last_index())

    def match_term(self, i: int, t: int) -> bool:
        try:
            return self.term(i) == t
        except StorageError:
            return False

    def is_up_to_date(self, last_index: int, term: int) -> bool:
        """Raft §5.4.1: a voter only grants to a candidate whose log is at least as up-to-date."""
        our_term = self.last_term()
        return term > our_term or (term == our_term and last_index >= self.last_index())

    # -- appending --------------------------------------------------------

    def find_conflict(self, ents: Sequence[Entry]) -> int:
        """Index of the first entry of `ents` that is new or conflicts, 0 if all match.

        Only the part overlapping our log is compared: the common case (pure
        append) costs nothing per entry.
        """
        if not ents:
            return 0
        last = self.last_index()
        first_idx = ents[0].index
        for k in range(min(len(ents), max(0, last - first_idx + 1))):
            e = ents[k]
            if not self.match_term(e.index, e.term):
                return e.index
        if ents[-1].index > last:
            return max(first_idx, last + 1)
        return 0

    def find_conflict_by_term(self, index: int, term: int) -> int:
        """Largest i <= index whose term <= `term` (or the first unknown index).

        Used on both sides of a rejected APP to skip a whole term of
        mismatching entries per round trip instead of one entry.
        """
        if index > self.last_index():
            return index
        while index > 0:
            try:
                if self.term(index) <= term:
                    break
            except StorageError:
                break
            index -= 1
        return index

    def maybe_append(
        self, index: int, log_term: int, committed: int, ents: Sequence[Entry]
    ) -> int | None:
        """Append `ents` after (index, log_term) if our log matches there.

        Returns the last index the leader's message vouches for, or None on mismatch.
        """
        if not self.match_term(index, log_term):
            return None
        last_new = index + len(ents)
        ci = self.find_conflict(ents)
        if ci:
            if ci <= self.committed:
                raise InvariantViolation(f"entry {ci} conflicts with committed {self.committed}")
            self.append(ents[ci - index - 1 :])
        self.commit_to(min(committed, last_new))
        return last_new

    def append(self, ents: Sequence[Entry]) -> int:
        if ents:
            if ents[0].index - 1 < self.committed:
                raise InvariantViolation(
                    f"append after {ents[0].index - 1} would rewrite committed {self.committed}"
                )
            self.unstable.truncate_and_append(ents)
        return self.last_index()

    # -- reading ----------------------------------------------------------

    def slice(self, lo: int, hi: int, max_size: int = NO_LIMIT) -> list[Entry]:
        """Entries [lo, hi), at most `max_size` bytes (at least one)."""
        if lo >= hi:
            return []
        if lo < self.first_index():
            raise Compacted(f"slice from {lo}: first index is {self.first_index()}")
        if hi > self.last_index() + 1:
            raise Unavailable(f"slice to {hi}: last index is {self.last_index()}")
        off = self.unstable.offset
        if hi <= off:
            return self.storage.entries(lo, hi, max_size)
        if lo >= off:
            return limit_size(self.unstable.slice(lo, hi), max_size)
        stored = self.storage.entries(lo, off, max_size)
        if len(stored) < off - lo:
            return stored  # size limit reached inside storage
        return limit_size(stored + self.unstable.slice(off, hi), max_size)

    def entries(self, i: int, max_size: int) -> list[Entry]:
        return self.slice(i, self.last_index() + 1, max_size)

    def has_next_committed_entries(self) -> bool:
        # A pending snapshot must be applied before any entry after it.
        return self.unstable.snapshot is None and self.committed > self.applied

    def next_committed_entries(self) -> list[Entry]:
        if not self.has_next_committed_entries():
            return []
        lo = max(self.applied + 1, self.first_index())
        return self.slice(lo, self.committed + 1)

    def snapshot(self) -> Snapshot:
        if self.unstable.snapshot is not None:
            return self.unstable.snapshot
        return self.storage.snapshot()

    # -- progress of commit / apply / persistence -----------------------

    def commit_to(self, index: int) -> None:
        if index > self.committed:
            if index > self.last_index():
                raise InvariantViolation(f"commit {index} beyond last index {self.last_index()}")
            self.committed = index

    def maybe_commit(self, index: int, term: int) -> bool:
        """Advance commit to `index` only if that entry is of `term` (Raft §5.4.2)."""
        if index > self.committed and self.zero_term_on_error(index) == term:
            self.commit_to(index)
            return True
        return False

    def applied_to(self, index: int) -> None:
        if index == 0:
            return
        if index > self.committed or index < self.applied:
            raise InvariantViolation(
                f"applied {index} outside [{self.applied}, committed {self.committed}]"
            )
        self.applied = index

    def stable_to(self, index: int, term: int) -> None:
        self.unstable.stable_to(index, term)

    def stable_snap_to(self, index: int) -> None:
        self.unstable.stable_snap_to(index)

    def restore(self, snap: Snapshot) -> None:
        self.committed = snap.index
        self.unstable.restore(snap)
