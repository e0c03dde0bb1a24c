"""The simulated world: real storage nodes over the twins, stepped by the simulator.

`SimWorld` owns an `InProcCluster` with engines="memory" (real `Store`s over
`MemoryEngines`, one `MemoryNetwork`, one `ManualClock` with a wall offset per
node) and is the only thing that moves it: `settle()` lets the event loop run
until the cluster is quiet, `tick()` moves time, and the fault verbs (cut,
hold, crash, restart, ...) change the world between two settles. It also keeps
the trace: one line per thing that happened, whose digest says whether two runs
of a seed were the same run.

Settling never reads a clock: it yields to the event loop (`asyncio.sleep(0)`,
which schedules nothing on a timer) until no message is in flight and every
live scheduler is idle for a few turns in a row, or a bounded number of turns
passed. Every task of the run lives on that loop and none sleeps on real time,
so what happens in those turns depends only on what was called before.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
from collections.abc import Sequence
from pathlib import Path

from rangekv.common import errors as E
from rangekv.domain.descriptor_txn import plan_split
from rangekv.domain.txn import TxnStatus
from rangekv.raft import LeaseState
from rangekv.raftnode import txn as T
from rangekv.raftnode.consistency import replica_checksum
from rangekv.raftnode.keys import data_span
from rangekv.raftnode.replica import RangeReplica
from rangekv.raftnode.requests import ReplicaLimits
from rangekv.raftnode.store import Store
from rangekv.replication.mutations import Mutation
from rangekv.replication.sync_mode import FsmSyncMode
from rangekv.replication.timing import RaftTiming
from rangekv.v1 import raftcmd_pb2
from testkit.inproc import InProcCluster, layout

__all__ = ["SimWorld"]

#: Event-loop turns one settle may take (a bound: a live-locked run stays finite).
MAX_SETTLE_TURNS = 400
#: Quiet turns in a row that end a settle (client tasks get to run on them).
QUIET_TURNS = 3
#: The replicas' own deadlines are real seconds; the simulator bounds every wait
#: in simulated time instead, so these never fire during a run.
NEVER = 1e9


class SimWorld:
    """N real stores over the twins; see the module docstring."""

    def __init__(
        self,
        *,
        nodes: int,
        split_keys: Sequence[bytes],
        sync_mode: FsmSyncMode,
        log_retain_entries: int,
        max_clock_offset_ns: int,
        mutation: Mutation,
        rng: random.Random,
    ) -> None:
        """`rng`: where every start of a node draws its own rng's seed, and split
        transactions their ids."""
        limits = ReplicaLimits(read_index_timeout=NEVER, write_timeout=NEVER)
        self.cluster = InProcCluster(
            Path("memory"),  # unused: the engines are MemoryEngines
            layout(*split_keys, nodes=tuple(range(1, nodes + 1))),
            sync_mode=sync_mode,
            timing=RaftTiming(),
            max_clock_offset_ns=max_clock_offset_ns,
            log_retain_entries=log_retain_entries,
            mutation=mutation,
            limits=limits,
            engines="memory",
            rng=rng,
        )
        self.sync_mode = sync_mode
        self.node_ids: tuple[int, ...] = tuple(self.cluster.node_ids)
        self._known_ranges: set[int] = {d.range_id for d in self.cluster.ranges}
        self.trace: list[str] = []
        self.step = 0
        #: Snapshot streams held (src, dst) -> the gate that releases them.
        self.held_snapshots: dict[tuple[int, int], asyncio.Event] = {}
        #: Starts of each node (a restart is a new process: new incarnations).
        self.starts: dict[int, int] = dict.fromkeys(self.node_ids, 1)
        self._streams_logged = 0
        self.txn_ids = random.Random(rng.getrandbits(64))
        self._state_cache: dict[
            tuple[int, int], tuple[tuple[int, ...], tuple[int, str] | None]
        ] = {}
        self._keys_cache: dict[int, tuple[tuple[int, ...], frozenset[bytes]]] = {}

    # --- the run ------------------------------------------------------------------------

    def log(self, line: str) -> None:
        self.trace.append(f"{self.step:04d} {line}")

    def digest(self) -> str:
        """The run's trace in one value: equal digests, equal runs."""
        h = hashlib.sha256()
        for line in self.trace:
            h.update(line.encode())
            h.update(b"\n")
        return h.hexdigest()[:16]

    async def start(self) -> None:
        await self.cluster.start()
        self.log(f"started nodes {list(self.node_ids)} ranges {list(self.range_ids)}")

    async def close(self) -> None:
        for gate in self.held_snapshots.values():
            gate.set()
        await self.cluster.close()

    async def settle(self) -> int:
        """Let the loop run until the cluster is quiet; returns the turns taken."""
        quiet = 0
        turns = MAX_SETTLE_TURNS
        for turn in range(MAX_SETTLE_TURNS):
            await asyncio.sleep(0)
            quiet = quiet + 1 if self.cluster.quiet() else 0
            if quiet >= QUIET_TURNS:
                turns = turn + 1
                break
        self._log_streams()
        return turns

    def _log_streams(self) -> None:
        """Trace the snapshot streams that ended since the last settle."""
        results = self.cluster.router.snapshot_results
        for src, dst, chunks, taken in results[self._streams_logged :]:
            self.log(f"snapshot {src}->{dst} ended: {chunks} chunks, taken={taken}")
        self._streams_logged = len(results)

    def tick(self, ticks: int = 1) -> None:
        self.cluster.tick(ticks)

    @property
    def now(self) -> float:
        return self.cluster.clock.now

    # --- what is up ---------------------------------------------------------------------

    def up(self, node: int) -> bool:
        return node not in self.cluster.stopped

    def live_nodes(self) -> list[int]:
        return [n for n in self.node_ids if self.up(n)]

    def store(self, node: int) -> Store | None:
        return self.cluster.stores.get(node) if self.up(node) else None

    def replica(self, node: int, range_id: int) -> RangeReplica | None:
        store = self.store(node)
        return store.replica(range_id) if store is not None else None

    def live_replicas(self, range_id: int) -> list[tuple[int, RangeReplica]]:
        out = []
        for node in self.live_nodes():
            replica = self.replica(node, range_id)
            if replica is not None and not replica.removed:
                out.append((node, replica))
        return out

    def leader(self, range_id: int) -> tuple[int, RangeReplica] | None:
        """A live replica that believes it leads (the highest term if several do)."""
        leaders = [(r.raft_status().term, n, r) for n, r in self.live_replicas(range_id)]
        leaders = [t for t in leaders if t[2].is_leader]
        if not leaders:
            return None
        _term, node, replica = max(leaders, key=lambda t: (t[0], t[1]))
        return node, replica

    def leaseholders(self, range_id: int) -> list[int]:
        now = self.now
        return [
            n
            for n, r in self.live_replicas(range_id)
            if r.lease_status(now).state is LeaseState.VALID
        ]

    def describe(self) -> str:
        """Every live replica's raft view, and the snapshot streams (failure reports)."""
        parts = []
        for range_id in self.range_ids:
            for node, replica in self.live_replicas(range_id):
                st = replica.raft_status()
                parts.append(
                    f"r{range_id}@n{node}:{st.state.name.lower()} t{st.term} lead{st.lead} "
                    f"commit{st.commit} applied{replica.applied_index} "
                    f"lease {replica.lease_status(self.now).state.name.lower()}"
                )
        router = self.cluster.router
        parts.append(f"streams in flight {router.streams_in_flight}")
        parts.append(f"stream results {router.snapshot_results[-4:]}")
        return "; ".join(parts)

    @property
    def range_ids(self) -> list[int]:
        """Every range any node ever held (splits add ranges; nothing removes one)."""
        for node in self.live_nodes():
            store = self.cluster.stores[node]
            self._known_ranges.update(r.range_id for r in store.replicas())
        return sorted(self._known_ranges)

    def range_for(self, key: bytes) -> int:
        """The range that holds `key` by the newest descriptors the live nodes hold."""
        holders = [d for d in self.cluster.descriptors() if d.contains_key(key)]
        if not holders:
            return next(d.range_id for d in self.cluster.ranges if d.contains_key(key))
        return max(holders, key=lambda d: (d.generation, d.range_id)).range_id

    async def split(self, node: int, range_id: int, key: bytes, right_id: int) -> str:
        """Split `range_id` at `key` on node `node`'s replica (its leaseholder, when
        asked): the split transaction's record through raft (CREATE, then COMMIT
        with the split trigger), as `InProcCluster.split` does, with a txn id drawn
        by the caller's rng. Returns what became of it."""
        replica = self.replica(node, range_id)
        if replica is None:
            return "no replica"
        plan = plan_split(replica.descriptor, key, right_id, self.txn_ids.randbytes(16))
        right, left = plan.updates
        txn = plan.txn.to_proto()
        try:
            await replica.propose_txn_op(raftcmd_pb2.TxnOp(kind=T.CREATE, txn=txn))
            commit = raftcmd_pb2.TxnOp(kind=T.COMMIT, txn=txn)
            commit.split_left.CopyFrom(left.to_proto())
            commit.split_right.CopyFrom(right.to_proto())
            record = await replica.propose_txn_op(commit)
        except E.RangeKVError as exc:
            return f"failed: {type(exc).__name__}"
        if record is None or record.status != TxnStatus.COMMITTED:
            return "not committed"
        return "committed"

    def _disk_stamp(self, node: int) -> tuple[int, int, int]:
        """Changes whenever node `node`'s state engine may hold something new."""
        assert self.cluster.disks is not None
        disk = self.cluster.disks[node].state_disk
        return disk.writes, disk.power_cuts, self.starts[node]

    def replica_state(self, node: int, range_id: int) -> tuple[int, str] | None:
        """(applied index, digest) of one replica as its engine holds them now: the
        storage node's own checksum (`rangekv.raftnode.consistency`, what the chaos
        suite compares on real processes), None for a replica not initialized on its
        engine. Recomputed only when the node's state disk was written or the
        replica's applied index moved."""
        store = self.cluster.stores[node]
        replica = store.replica(range_id)
        assert replica is not None
        stamp = (*self._disk_stamp(node), replica.applied_index)
        cached = self._state_cache.get((node, range_id))
        if cached is not None and cached[0] == stamp:
            return cached[1]
        found = replica_checksum(store.state_engine, range_id)
        state = None if found is None else (found.applied_index, found.digest)
        self._state_cache[(node, range_id)] = (stamp, state)
        return state

    def data_keys(self, node: int) -> frozenset[bytes]:
        """Every MVCC version the node's engine holds (all ranges)."""
        stamp = self._disk_stamp(node)
        cached = self._keys_cache.get(node)
        if cached is not None and cached[0] == stamp:
            return cached[1]
        lo, hi = data_span(b"", b"")
        keys = frozenset(k for k, _v in self.cluster.stores[node].state_engine.iterate(lo, hi))
        self._keys_cache[node] = (stamp, keys)
        return keys

    # --- faults -------------------------------------------------------------------------

    async def crash(self, node: int) -> int:
        """The node's process dies: it loses what its disks had not synced."""
        for (src, dst), gate in list(self.held_snapshots.items()):
            if node in (src, dst):
                gate.set()
                del self.held_snapshots[(src, dst)]
        return await self.cluster.power_cut(node)

    async def restart(self, node: int) -> None:
        self.starts[node] += 1
        await self.cluster.restart_node(node)

    def hold_snapshots(self, src: int, dst: int) -> None:
        if (src, dst) not in self.held_snapshots:
            self.held_snapshots[(src, dst)] = self.cluster.router.hold_snapshots(src, dst)

    def release_snapshots(self, src: int, dst: int) -> bool:
        gate = self.held_snapshots.pop((src, dst), None)
        if gate is None:
            return False
        gate.set()
        return True
