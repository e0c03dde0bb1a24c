"""What must hold after every event of a driver simulation.

Checked on the real replicas (their raft cores, applied indexes and engines),
never on what the simulator believes:

* **one lease**: at most one replica of a range holds a valid lease at any
  instant (every node reads the same monotonic time; wall offsets do not enter
  leases);
* **applied <= committed**: no replica applied an entry that was never
  committed: its applied index is at most the highest commit index any replica
  of the range ever reported (a replica's own commit index may lag what it
  applied after a crash: commit-only hard states are written unsynced, and raft
  re-learns them from the leader);
* **applied never goes back**: a replica's applied index only grows -- across
  crashes too in SYNC mode (every apply is synced); in NOSYNC mode a crash may
  lose unsynced applies, so there the baseline starts over with the process;
* **same index, same state**: two replicas of a range at the same applied index
  hold the same data, txn records and descriptor (compared by digest, against
  the first replica seen at that index); an uninitialized replica (applied
  index below the initial index) holds no state of its own and is not compared;
* **no applied write is lost**: the MVCC versions a node's engine holds never
  disappear while an initialized replica of the node covers their key (nothing
  in the simulation collects garbage, and a snapshot brings newer state, never
  less) -- across crashes too in SYNC mode, as above. Versions no replica
  covers may go: a left-hand replica that skips its split by a snapshot leaves
  the right-hand keys behind, owned by nobody on that node, and the snapshot's
  install (or the right-hand side's own) clears them.

A violation raises `InvariantViolation` with what was seen.
"""

from __future__ import annotations

from rangekv.raftnode.keys import decode_version_key
from rangekv.raftnode.replica import RangeReplica
from rangekv.raftnode.store import INITIAL_INDEX
from rangekv.replication.sync_mode import FsmSyncMode
from testkit.driversim.world import SimWorld

__all__ = ["InvariantViolation", "Invariants"]


class InvariantViolation(AssertionError):
    """An invariant of the driver failed (the message says which, and where)."""


class Invariants:
    """The checks of the module docstring, with the memory they need between events."""

    def __init__(self, world: SimWorld) -> None:
        self.world = world
        #: (node, range) -> applied index last seen, for the living process.
        self._applied: dict[tuple[int, int], int] = {}
        #: (range, applied index) -> (digest, node that had it first).
        self._states: dict[tuple[int, int], tuple[str, int]] = {}
        #: node -> MVCC versions its engine held at the last check.
        self._versions: dict[int, frozenset[bytes]] = {}
        #: range -> the highest commit index any of its replicas reported.
        self._committed: dict[int, int] = {}
        self.checks = 0

    def forget_process(self, node: int) -> None:
        """Node `node`'s process died: what it had not synced may be gone (NOSYNC
        mode; in SYNC mode every apply was synced, so nothing may be)."""
        if self.world.sync_mode is FsmSyncMode.SYNC:
            return
        for key in [k for k in self._applied if k[0] == node]:
            del self._applied[key]
        self._versions.pop(node, None)

    def check(self) -> None:
        self.checks += 1
        world = self.world
        for range_id in world.range_ids:
            holders = world.leaseholders(range_id)
            if len(holders) > 1:
                raise InvariantViolation(
                    f"range {range_id}: {len(holders)} valid leases at once, on nodes {holders}"
                )
            replicas = world.live_replicas(range_id)
            for _node, replica in replicas:
                commit = replica.group.commit_index()
                self._committed[range_id] = max(self._committed.get(range_id, 0), commit)
            for node, replica in replicas:
                self._check_replica(node, range_id, replica)
        for node in world.live_nodes():
            self._check_versions(node)

    def _check_replica(self, node: int, range_id: int, replica: RangeReplica) -> None:
        applied = replica.applied_index
        commit = self._committed[range_id]
        if applied > commit:
            raise InvariantViolation(
                f"node {node} range {range_id}: applied {applied} > {commit}, the highest "
                "index any replica of the range knew to be committed"
            )
        before = self._applied.get((node, range_id), 0)
        if applied < before:
            raise InvariantViolation(
                f"node {node} range {range_id}: applied index went back from {before} to {applied}"
            )
        self._applied[(node, range_id)] = applied
        if applied < INITIAL_INDEX:
            # Uninitialized (created by a peer's message, waiting for the split
            # that makes it or for a snapshot): it holds no state of its own. The
            # keys under its span still belong to this node's left-hand replica,
            # or are being replaced by an ingest that raft has not yet adopted.
            return
        state = self.world.replica_state(node, range_id)
        if state is None:
            raise InvariantViolation(
                f"node {node} range {range_id}: applied {applied} but its engine holds "
                "no applied state or descriptor of the range"
            )
        index, digest = state
        seen = self._states.setdefault((range_id, index), (digest, node))
        if seen[0] != digest:
            raise InvariantViolation(
                f"range {range_id} at applied index {index}: node {node} holds state "
                f"{digest}, node {seen[1]} held {seen[0]} at the same index"
            )

    def _check_versions(self, node: int) -> None:
        now = self.world.data_keys(node)
        before = self._versions.get(node)
        if before is not None and not before <= now:
            lost = sorted(k for k in before - now if self._owned(node, k))
            if not lost:
                self._versions[node] = now
                return
            raise InvariantViolation(
                f"node {node}: {len(lost)} applied MVCC versions vanished "
                f"(first: {lost[0]!r}) while its process lived"
            )
        self._versions[node] = now

    def _owned(self, node: int, stored_key: bytes) -> bool:
        """Whether an initialized replica on `node` covers this MVCC version's key.
        One that none covers is left over from a left-hand replica that skipped its
        split by a snapshot: it belongs to no replica there (the right-hand side's
        own snapshot clears its span and brings the range's versions)."""
        user_key, _ts = decode_version_key(stored_key)
        for range_id in self.world.range_ids:
            replica = self.world.cluster.stores[node].replica(range_id)
            if replica is None or replica.applied_index < INITIAL_INDEX:
                continue
            if replica.descriptor.contains_key(user_key):
                return True
        return False
