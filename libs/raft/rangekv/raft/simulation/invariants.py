"""Raft's safety properties, checked online against everything the cluster observes.

The checker is fed plain values (terms, indices, entries, node ids) rather
than nodes, for two reasons: the checks can be unit-tested on hand-made
violating states (the tests prove each check *can* fail), and the cluster
decides where the observations come from (persisted storage, Ready contents,
``status()``) without the checker reaching into the core.

Checked properties (Raft paper, Fig. 3, plus two of our own):

* **Election safety** -- at most one leader per term, over the whole run;
  and, underneath it, one durable vote per term per node (terms and commit
  indices on disk never go back either).
* **Log matching** -- incrementally: an entry ``(index, term)`` persisted
  anywhere always has the same payload and the same predecessor term, which
  by induction gives identical prefixes; plus a full pairwise scan of the
  persisted logs from time to time.
* **Leader completeness** -- a new leader's log holds every entry known to
  be committed in an earlier term.
* **State machine safety** -- no two nodes apply different entries at one
  index, and nodes at the same applied index hold the same state (this also
  covers snapshots, which skip entries).
* **Committed entries are never overwritten** on the disk of a node that
  knew them committed.
* **Acknowledged writes survive** -- an acked write is the entry every node
  applies at its index.
* **Lease safety** -- at no instant do two nodes hold a VALID lease.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping, Sequence

from rangekv.raft import Entry, HardState


class InvariantViolation(AssertionError):
    """A safety property failed; ``invariant`` names which one."""

    def __init__(self, invariant: str, detail: str) -> None:
        super().__init__(f"{invariant}: {detail}")
        self.invariant = invariant
        self.detail = detail


_EntryKey = tuple[int, int]  # (index, term)


class InvariantChecker:
    """Accumulates observations of one run and raises on the first contradiction."""

    def __init__(self) -> None:
        self.leaders: dict[int, int] = {}
        """term -> the node that was leader in it."""
        self.entries: dict[_EntryKey, tuple[int, bytes, int | None]] = {}
        """(index, term) -> (entry type value, data, term of index-1 if known)."""
        self.committed: dict[int, int] = {}
        """index -> term of the entry known to be committed there."""
        self.applied: dict[int, tuple[int, int, bytes]] = {}
        """index -> (term, type value, data) of the entry applied there."""
        self.states: dict[int, Hashable] = {}
        """applied index -> state machine fingerprint after applying it."""
        self.acked: dict[int, tuple[int, bytes]] = {}
        """index -> (term, data) of writes acknowledged to clients."""
        self.lease_checks = 0

    # -- elections --------------------------------------------------------------

    def observe_leader(self, term: int, node_id: int) -> bool:
        """Record that ``node_id`` is leader of ``term``; True if this is news."""
        seen = self.leaders.get(term)
        if seen is None:
            self.leaders[term] = node_id
            return True
        if seen != node_id:
            raise InvariantViolation(
                "election safety", f"term {term} has two leaders: n{seen} and n{node_id}"
            )
        return False

    def check_leader_log(
        self,
        node_id: int,
        term: int,
        first_index: int,
        last_index: int,
        term_of: Callable[[int], int],
    ) -> None:
        """Leader completeness for ``node_id``, leader of ``term``, whose log spans
        ``[first_index, last_index]`` (below ``first_index`` it holds a snapshot,
        which only ever covers committed entries)."""
        for index, cterm in self.committed.items():
            if cterm >= term or index < first_index:
                continue
            if index > last_index:
                raise InvariantViolation(
                    "leader completeness",
                    f"n{node_id} leader of term {term} lacks committed entry {index} "
                    f"(term {cterm}); its log ends at {last_index}",
                )
            have = term_of(index)
            if have != cterm:
                raise InvariantViolation(
                    "leader completeness",
                    f"n{node_id} leader of term {term} has term {have} at committed "
                    f"index {index} (committed term {cterm})",
                )

    def observe_hard_state(self, node_id: int, before: HardState, after: HardState) -> None:
        """``node_id`` replaced ``before`` by ``after`` on disk: terms and commit
        indices never go back, and a vote once cast in a term is never changed."""
        if after.term < before.term or after.commit < before.commit:
            raise InvariantViolation(
                "durable state regressed", f"n{node_id} persisted {after} over {before}"
            )
        if after.term == before.term and before.vote != 0 and after.vote != before.vote:
            raise InvariantViolation(
                "single vote per term",
                f"n{node_id} changed its vote in term {after.term} from n{before.vote} "
                f"to n{after.vote}",
            )

    # -- logs -------------------------------------------------------------------

    def observe_entry(
        self, node_id: int, entry: Entry, prev_term: int | None, node_commit: int = 0
    ) -> None:
        """An entry ``node_id`` just persisted, with the term of its predecessor there
        and the commit index the node had already persisted.

        Only a node's *own* committed prefix is protected: a deposed leader may
        well append garbage at an index someone else has committed meanwhile
        (that garbage is overwritten later), but no node may ever rewrite an
        entry at or below its own commit index.
        """
        key = (entry.index, entry.term)
        cterm = self.committed.get(entry.index)
        if entry.index <= node_commit and cterm is not None and cterm != entry.term:
            raise InvariantViolation(
                "committed entry overwritten",
                f"n{node_id} persisted term {entry.term} at index {entry.index} <= its "
                f"commit {node_commit}, where term {cterm} is committed",
            )
        seen = self.entries.get(key)
        if seen is None:
            self.entries[key] = (entry.type.value, entry.data, prev_term)
            return
        s_type, s_data, s_prev = seen
        if s_type != entry.type.value or s_data != entry.data:
            raise InvariantViolation(
                "log matching",
                f"n{node_id} holds a different entry at index {entry.index} term "
                f"{entry.term}: {entry.data[:60]!r} vs {s_data[:60]!r}",
            )
        if prev_term is not None and s_prev is not None and prev_term != s_prev:
            raise InvariantViolation(
                "log matching",
                f"n{node_id} entry {entry.index}/{entry.term} follows term {prev_term} "
                f"but elsewhere follows term {s_prev}",
            )
        if s_prev is None and prev_term is not None:
            self.entries[key] = (s_type, s_data, prev_term)

    def observe_commit(self, node_id: int, index: int, term: int) -> None:
        """``node_id`` knows the entry ``(index, term)`` is committed."""
        seen = self.committed.get(index)
        if seen is None:
            self.committed[index] = term
        elif seen != term:
            raise InvariantViolation(
                "log matching",
                f"n{node_id} committed term {term} at index {index}, others committed {seen}",
            )

    def check_logs_match(self, logs: Mapping[int, Sequence[Entry]]) -> None:
        """Pairwise: wherever two contiguous logs agree on a term they agree on
        everything before it (within the part both still hold)."""
        ids = sorted(logs)
        for pos, a in enumerate(ids):
            log_a = logs[a]
            if not log_a:
                continue
            for b in ids[pos + 1 :]:
                log_b = logs[b]
                if not log_b:
                    continue
                lo = max(log_a[0].index, log_b[0].index)
                hi = min(log_a[-1].index, log_b[-1].index)
                off_a, off_b = log_a[0].index, log_b[0].index
                match = False
                for i in range(hi, lo - 1, -1):
                    ea, eb = log_a[i - off_a], log_b[i - off_b]
                    if not match and ea.term == eb.term:
                        match = True
                    if match and ea != eb:
                        raise InvariantViolation(
                            "log matching",
                            f"n{a} and n{b} share a later (index, term) but differ at "
                            f"index {i}: {ea} vs {eb}",
                        )

    # -- state machines ---------------------------------------------------------

    def observe_applied(
        self, node_id: int, entry: Entry, state: Hashable, *, fresh: bool = True
    ) -> None:
        """``node_id`` applied ``entry`` and now holds ``state``."""
        seen = self.applied.get(entry.index)
        mine = (entry.term, entry.type.value, entry.data)
        if seen is None:
            self.applied[entry.index] = mine
        elif seen != mine:
            raise InvariantViolation(
                "state machine safety",
                f"n{node_id} applied {mine[2][:60]!r} (term {entry.term}) at index "
                f"{entry.index}; another node applied {seen[2][:60]!r} (term {seen[0]})",
            )
        ack = self.acked.get(entry.index)
        if ack is not None and ack != (entry.term, entry.data):
            raise InvariantViolation(
                "acknowledged write lost",
                f"n{node_id} applied term {entry.term} at index {entry.index}, where an "
                f"acked write of term {ack[0]} lives",
            )
        self._observe_state(node_id, entry.index, state)

    def observe_snapshot_state(self, node_id: int, index: int, state: Hashable) -> None:
        """``node_id`` installed a snapshot and so holds ``state`` at ``index``."""
        self._observe_state(node_id, index, state)

    def _observe_state(self, node_id: int, index: int, state: Hashable) -> None:
        seen = self.states.get(index)
        if seen is None:
            self.states[index] = state
        elif seen != state:
            raise InvariantViolation(
                "state machine safety",
                f"n{node_id} state at applied index {index} differs from another node's",
            )

    def observe_ack(self, node_id: int, entry: Entry) -> None:
        """A client was told its write (this entry, applied by ``node_id``) succeeded."""
        self.acked[entry.index] = (entry.term, entry.data)
        seen = self.applied.get(entry.index)
        if seen is not None and (seen[0], seen[2]) != (entry.term, entry.data):
            raise InvariantViolation(
                "acknowledged write lost",
                f"ack of index {entry.index} term {entry.term} by n{node_id} contradicts "
                f"the applied entry of term {seen[0]}",
            )

    def check_converged(self, applied: Mapping[int, tuple[int, Hashable]]) -> None:
        """End of run: every member applied the same prefix to the same state, and
        that prefix includes every acknowledged write."""
        if not applied:
            raise InvariantViolation("convergence", "no live member at the end of the run")
        indices = {idx for idx, _ in applied.values()}
        if len(indices) != 1:
            detail = ", ".join(f"n{n}@{idx}" for n, (idx, _) in sorted(applied.items()))
            raise InvariantViolation("convergence", f"applied indices differ: {detail}")
        final = indices.pop()
        states = [st for _, st in applied.values()]
        if any(st != states[0] for st in states):
            raise InvariantViolation("state machine safety", f"final states differ at {final}")
        lost = [i for i in self.acked if i > final]
        if lost:
            raise InvariantViolation(
                "acknowledged write lost",
                f"acked indices {sorted(lost)[:10]} beyond the converged applied index {final}",
            )

    # -- leases -----------------------------------------------------------------

    def observe_leases(self, instant: float, holders: Sequence[int]) -> None:
        """The nodes whose ``lease_status`` said VALID at global time ``instant``."""
        self.lease_checks += 1
        if len(holders) > 1:
            raise InvariantViolation(
                "lease safety",
                f"nodes {sorted(holders)} all hold a VALID lease at t={instant:.6f}",
            )
