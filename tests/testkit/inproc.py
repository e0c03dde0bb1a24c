"""Real storage nodes in one process, over a network and a clock the test controls.

Each node is a real `rangekv.raftnode.store.Store`: RocksDB engines on disk, the
real raft scheduler (group commit, fsync in worker threads), real replicas and
their Replica API (`RangeReplica.batch`). What is replaced is only what lies
between the nodes and around them, by the in-memory twins the libraries ship:

* the network is a `MemoryNetwork` (rangekv.replication.raft_network) that hands
  raft messages from one store to another in the same event loop; a test can
  hold a link (messages queue until it is released), cut it (messages are
  dropped), and hold a snapshot stream in the middle of its chunks;
* time is a `FakeClock` over a `ManualClock` (rangekv.common.clock): monotonic
  time (ticks, leases) moves only when the test calls `tick()`, and every node's
  wall clock is that time plus a per-node offset the test can set (skewed
  clocks, clocks stepping back);
* nothing runs in the background but the schedulers: no ticker, no truncation,
  no GC loop (the test ticks and truncates when it wants to).

So a test can put an operation exactly where it wants in the interleaving of
raft traffic and client calls, and the outcome does not depend on the machine's
speed. `InProcNodeClients` lets the gateway's DistSender run against these
nodes in the same process (the gateway's `MemoryNodeClients` twin, answered by
these replicas).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rangekv.common import errors as E
from rangekv.common.clock import ClockView, ManualClock
from rangekv.common.descriptors import RangeDescriptor, ReplicaDescriptor
from rangekv.domain.descriptor_txn import plan_split
from rangekv.domain.txn import TxnStatus
from rangekv.gateway.cache_types import LookupResult
from rangekv.gateway.node_client import MemoryNodeClients
from rangekv.raft import HardState, LeaseState, Message
from rangekv.raftnode import txn as T
from rangekv.raftnode.replica import RangeReplica
from rangekv.raftnode.requests import ReplicaLimits
from rangekv.raftnode.store import Store, StoreConfig
from rangekv.replication.engines import EngineOpener, Engines, MemoryEngines, RocksEngines
from rangekv.replication.host import HostConfig, HostSeams
from rangekv.replication.log_engine import LogBatch, RaftLogEngine
from rangekv.replication.mutations import Mutation, TestFaults
from rangekv.replication.raft_network import MemoryNetwork
from rangekv.replication.state_engine import StateBatch, StateEngine
from rangekv.replication.sync_mode import FsmSyncMode
from rangekv.replication.timing import RaftTiming
from rangekv.v1 import raftcmd_pb2, replica_pb2, types_pb2
from testkit.replica_client import get_op, put_op


class FakeClock:
    """Monotonic seconds moved by the test; wall clocks derived from it, per node."""

    def __init__(self) -> None:
        self.manual = ManualClock()
        self.offsets_ns: dict[int, int] = {}

    @property
    def now(self) -> float:
        return self.manual.now

    def monotonic(self) -> float:
        return self.manual.monotonic()

    def advance(self, seconds: float) -> None:
        self.manual.advance(seconds)

    def wall_ns(self, node: int) -> int:
        """Node `node`'s wall clock: true time plus its offset (node 0: the test's)."""
        return self.manual.wall_ns() + self.offsets_ns.get(node, 0)

    def of(self, node: int) -> ClockView:
        """Node `node`'s `Clock`."""
        return self.manual.view(lambda: self.offsets_ns.get(node, 0))


def layout(*split_keys: bytes, nodes: Sequence[int] = (1, 2, 3)) -> list[RangeDescriptor]:
    """Ranges [b"", k1), [k1, k2), ... [kn, b"") with ids 1.., each on `nodes`."""
    bounds = [b"", *split_keys, b""]
    replicas = tuple(ReplicaDescriptor(n, n) for n in nodes)
    return [
        RangeDescriptor(
            i + 1, bounds[i], bounds[i + 1], replicas, generation=1, next_replica_id=max(nodes) + 1
        )
        for i in range(len(bounds) - 1)
    ]


class PowerCutStateEngine(StateEngine):
    """A state engine that can lose, in this process, what it wrote since its last sync.

    A power cut loses the writes the OS had not flushed: for the state engine in
    NOSYNC mode, every commit since the last sync (a synced commit makes all before
    it durable, as a WAL fsync does). The process cannot be killed here, so each
    unsynced commit records the values it replaced, and `power_cut` puts them back
    -- newest first -- before the engine is closed."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._undo: list[list[tuple[bytes, bytes | None]]] = []

    def commit(self, batch: StateBatch, *, force_sync: bool = False) -> None:
        if force_sync or self.sync_mode is FsmSyncMode.SYNC:
            self._undo.clear()
        else:
            keys = set(batch.written_keys())
            for lo, hi in batch.deleted_ranges():
                keys.update(k for k, _v in self.iterate(lo, hi))
            self._undo.append([(k, self.get(k)) for k in keys])
        super().commit(batch, force_sync=force_sync)

    def sync(self) -> None:
        super().sync()
        self._undo.clear()

    def power_cut(self) -> int:
        """Undo every unsynced commit; returns how many were lost."""
        lost = len(self._undo)
        batch = self.new_batch()
        for undo in reversed(self._undo):
            for key, old in undo:
                if old is None:
                    batch.delete(key)
                else:
                    batch.put(key, old)
        self._undo.clear()
        super().commit(batch, force_sync=True)
        return lost


class PowerCutLogEngine(RaftLogEngine):
    """The raft-log twin of PowerCutStateEngine: its only unsynced writes are hard
    states whose commit index alone moved; a power cut loses those written since
    the last synced write (which, like a WAL fsync, makes everything before it
    durable)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._undo: dict[int, HardState] = {}

    def commit(self, batch: LogBatch, *, sync: bool = True) -> None:
        if sync:
            self._undo.clear()
        else:
            for gid in batch.group_ids:
                self._undo.setdefault(gid, self.storage(gid).initial_state()[0])
        super().commit(batch, sync=sync)

    def power_cut(self) -> None:
        if self._undo:
            batch = self.new_batch()
            for gid, hs in self._undo.items():
                batch.set_hard_state(gid, hs)
            self._undo.clear()
            super().commit(batch, sync=True)


@dataclass(frozen=True)
class PowerCutEngines:
    """The engine opener of a node whose power the test can cut (RocksDB on disk)."""

    data_dir: Path
    blocking: bool = True

    def __call__(self, sync_mode: FsmSyncMode) -> Engines:
        log_engine = PowerCutLogEngine.open(self.data_dir / "raftlog")
        state_engine = PowerCutStateEngine.open(self.data_dir / "state", sync_mode)
        return log_engine, state_engine


class InProcCluster:
    """N real stores in this process; see the module docstring."""

    def __init__(
        self,
        base: Path,
        ranges: Sequence[RangeDescriptor],
        *,
        sync_mode: FsmSyncMode = FsmSyncMode.SYNC,
        timing: RaftTiming | None = None,
        max_clock_offset_ns: int = 500_000_000,
        log_retain_entries: int = 2000,
        store_factory: Callable[[StoreConfig, HostSeams], Store] | None = None,
        mutation: Mutation = Mutation.NONE,
        power_cuts: bool = False,
        limits: ReplicaLimits | None = None,
        max_uncommitted_bytes: int = 64 << 20,
        engines: str = "rocksdb",
        rng: random.Random | None = None,
        quiesce_after_ticks: int = 3,
    ) -> None:
        """`engines`: "rocksdb" (on disk under `base`) or "memory" (the engines' twins
        on simulated disks, which keep what is durable across a node's restarts and
        lose the rest in a power cut). `rng`: where each start of a node draws the
        seed of its own rng (incarnations, election timeouts, txn ids); by default
        a fixed function of the node and the start count."""
        if engines not in ("rocksdb", "memory"):
            raise ValueError(f"engines must be rocksdb or memory, not {engines!r}")
        self.base = base
        self.ranges = list(ranges)
        self.node_ids = sorted({r.node_id for d in ranges for r in d.replicas})
        self.clock = FakeClock()
        self.timing = timing or RaftTiming()
        self.sync_mode = sync_mode
        self.max_clock_offset_ns = max_clock_offset_ns
        self.log_retain_entries = log_retain_entries
        self.router = MemoryNetwork()
        self.stores: dict[int, Store] = {}
        self._store_factory = store_factory
        self.mutation = mutation
        self._starts = itertools.count()
        self._rng = rng
        #: Engines that can lose their unsynced writes (`power_cut`).
        self.power_cuts = power_cuts
        #: The simulated disks of each node (engines="memory").
        self.disks: dict[int, MemoryEngines] | None = {} if engines == "memory" else None
        self.limits = limits or ReplicaLimits()
        self.max_uncommitted_bytes = max_uncommitted_bytes
        #: Ranges quiesce after this many idle ticks (0: never), as raftnode's default.
        self.quiesce_after_ticks = quiesce_after_ticks

    @property
    def stopped(self) -> set[int]:
        """Nodes that are down (the network neither delivers to nor from them)."""
        return self.router.down

    def _config(self, node: int) -> StoreConfig:
        return StoreConfig(
            host=HostConfig(
                node_id=node,
                timing=self.timing,
                fsm_sync_mode=self.sync_mode,
                log_retain_entries=self.log_retain_entries,
                max_uncommitted_bytes=self.max_uncommitted_bytes,
                quiesce_after_ticks=self.quiesce_after_ticks,
                lazy_commit=True,  # as raftnode runs
                lazy_heartbeat=True,
                gather_turns=16,  # raftnode's default
            ),
            limits=self.limits,
            max_clock_offset_ns=self.max_clock_offset_ns,
        )

    def _open(self, node: int) -> Store:
        data_dir = self.base / f"n{node}"
        opener: EngineOpener
        if self.disks is not None:
            opener = self.disks.setdefault(node, MemoryEngines())
        elif self.power_cuts:
            opener = PowerCutEngines(data_dir)
        else:
            opener = RocksEngines(data_dir)
        seams = HostSeams(
            sender=self.router.sender(node),
            open_engines=opener,
            clock=self.clock.of(node),
            # Every start of a node draws new incarnations, as a real restart does.
            rng=random.Random(
                self._rng.getrandbits(64)
                if self._rng is not None
                else node * 1000 + next(self._starts)
            ),
            faults=TestFaults(mutation=self.mutation),
        )
        config = self._config(node)
        if self._store_factory is not None:
            store = self._store_factory(config, seams)
        else:
            store = Store(config, seams, resolve_address=lambda n: f"node-{n}")
        self.router.attach(node, store)
        return store

    async def start(self) -> None:
        for node in self.node_ids:
            store = self._open(node)
            if not store.load_replicas():
                store.bootstrap_ranges(self.ranges)
            store.scheduler.start()
            self.stores[node] = store

    async def stop_node(self, node: int) -> None:
        """Stop a node cleanly (engines closed); `restart_node` opens it again."""
        self.router.take_down(node)
        await self.stores[node].stop()

    async def power_cut(self, node: int) -> int:
        """Cut `node`'s power: it stops, losing what its engines had not synced.
        Returns how many state commits were lost."""
        store = self.stores[node]
        self.router.take_down(node)
        await store.scheduler.stop()
        if self.disks is not None:
            lost = self.disks[node].power_cut()
        else:
            state, log_engine = store.state_engine, store.log_engine
            assert isinstance(state, PowerCutStateEngine)
            assert isinstance(log_engine, PowerCutLogEngine)
            lost = state.power_cut()
            log_engine.power_cut()
        await store.stop()
        return lost

    async def restart_node(
        self, node: int, before_start: Callable[[Store], None] | None = None
    ) -> Store:
        """Open `node` again from its disk; `before_start` runs once its replicas
        are loaded and before its scheduler runs (to place a message first)."""
        store = self._open(node)
        store.load_replicas()
        self.stores[node] = store
        self.stopped.discard(node)
        if before_start is not None:
            before_start(store)
        store.scheduler.start()
        return store

    async def close(self) -> None:
        await self.router.close()
        for node, store in self.stores.items():
            if node not in self.stopped:
                self.stopped.add(node)
                await store.stop()

    # --- time -------------------------------------------------------------------------

    def tick(self, ticks: int = 1) -> None:
        for _ in range(ticks):
            self.clock.advance(self.timing.tick_interval)
            for node, store in self.stores.items():
                if node not in self.stopped:
                    store.host.tick(self.clock.now)

    async def until(
        self,
        predicate: Callable[[], bool],
        what: str,
        *,
        timeout: float = 15.0,
        tick: bool = True,
    ) -> None:
        """Let the cluster run (ticking, when `tick`) until `predicate()` holds.

        Real time only bounds the wait; the outcome never depends on it: time moves
        one tick only once every scheduler is idle and no message is on its way, so
        how many ticks something takes depends on the raft traffic, not on how fast
        this machine fsyncs. (A snapshot stream or a client call may still be
        running: those are the test's to wait for.)
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        for rounds in itertools.count():
            if predicate():
                return
            if loop.time() > deadline:
                raise AssertionError(f"timed out after {rounds} rounds waiting for {what}")
            if tick and self.quiet():
                self.tick()
            await asyncio.sleep(0.001)

    async def until_applied_everywhere(
        self, range_id: int, index: int, *, tick: bool = True, timeout: float = 15.0
    ) -> None:
        """`until` every live node holds a replica of `range_id` that applied `index`
        (INITIAL_INDEX: an initialized one)."""

        def done() -> bool:
            return all(
                (r := self.stores[n].replica(range_id)) is not None and r.applied_index >= index
                for n in self.node_ids
                if n not in self.stopped
            )

        await self.until(
            done,
            f"every live replica of range {range_id} to apply index {index}",
            tick=tick,
            timeout=timeout,
        )

    async def tick_when_quiet(self) -> None:
        """Let every message arrive and every scheduler settle, then move one tick: a
        test stepping time this way sees each tick's state after all it caused."""
        await self.until(self.quiet, "a quiet network", tick=False)
        self.tick()

    def quiet(self) -> bool:
        """No message on its way and every live scheduler idle."""
        return self.router.in_flight == 0 and all(
            store.scheduler.idle for n, store in self.stores.items() if n not in self.stopped
        )

    # --- replicas ---------------------------------------------------------------------

    def replica(self, node: int, range_id: int) -> RangeReplica:
        replica = self.stores[node].replica(range_id)
        if replica is None:
            raise AssertionError(f"node {node} has no replica of range {range_id}")
        return replica

    def valid_leases(self, range_id: int) -> list[int]:
        """Every live node whose replica of `range_id` holds a valid lease now (safety:
        never more than one)."""
        out = []
        for node, store in self.stores.items():
            if node in self.stopped:
                continue
            replica = store.replica(range_id)
            if replica is not None and (
                replica.lease_status(self.clock.now).state is LeaseState.VALID
            ):
                out.append(node)
        return out

    def leaseholder(self, range_id: int) -> int | None:
        """The node whose replica of `range_id` holds a valid lease now, if any."""
        holders = self.valid_leases(range_id)
        return holders[0] if holders else None

    @contextlib.contextmanager
    def watching(self) -> Iterator[list[tuple[int, Message]]]:
        """Every raft message the network carries while inside, as (group id, message)."""
        seen: list[tuple[int, Message]] = []
        network = self.router
        original = network._send

        def spy(src: int, dst: int, group_id: int, msg: Message, desc: Any) -> None:
            seen.append((group_id, msg))
            original(src, dst, group_id, msg, desc)

        network._send = spy  # type: ignore[method-assign]
        try:
            yield seen
        finally:
            network._send = original  # type: ignore[method-assign]

    async def make_leaseholder(self, range_id: int, node: int) -> None:
        """Move range `range_id`'s lease to `node` (electing first if need be)."""
        target = self.replica(node, range_id)

        def done() -> bool:
            if self.leaseholder(range_id) == node:
                return True
            holder = next(
                (
                    self.replica(n, range_id)
                    for n in self.stores
                    if n not in self.stopped
                    and self.stores[n].replica(range_id) is not None
                    and self.replica(n, range_id).is_leader
                ),
                None,
            )
            if holder is not None and holder is not target:
                holder.transfer_leadership(target.replica_id)
            return False

        await self.until(done, f"node {node} to hold the lease of range {range_id}")

    async def elect_all(self, leaders: dict[int, int] | None = None) -> None:
        """Give every range a leaseholder (`leaders`: range id -> node, where it matters)."""
        for desc in self.ranges:
            want = (leaders or {}).get(desc.range_id)
            if want is not None:
                await self.make_leaseholder(desc.range_id, want)
            else:
                await self.until(
                    lambda rid=desc.range_id: self.leaseholder(rid) is not None,  # type: ignore[misc]
                    f"a leaseholder for range {desc.range_id}",
                )

    def descriptors(self) -> list[RangeDescriptor]:
        """The newest descriptor of every range any live node holds."""
        newest: dict[int, RangeDescriptor] = {}
        for node, store in self.stores.items():
            if node in self.stopped:
                continue
            for replica in store.replicas():
                d = replica.descriptor
                if d.range_id not in newest or d.generation > newest[d.range_id].generation:
                    newest[d.range_id] = d
        return sorted(newest.values(), key=lambda d: d.start_key)

    async def split(self, range_id: int, key: bytes, right_id: int) -> RangeDescriptor:
        """Split `range_id` at `key` through raft on its leaseholder: the split
        transaction's record (CREATE, then COMMIT with the split trigger), without
        the meta range (the in-process cluster has none). Returns the right side."""
        holder = self.leaseholder(range_id)
        if holder is None:
            raise AssertionError(f"range {range_id} has no leaseholder")
        replica = self.replica(holder, range_id)
        plan = plan_split(replica.descriptor, key, right_id, bytes([range_id]) * 16)
        right, left = plan.updates
        txn = plan.txn.to_proto()
        await replica.propose_txn_op(raftcmd_pb2.TxnOp(kind=T.CREATE, txn=txn))
        commit = raftcmd_pb2.TxnOp(kind=T.COMMIT, txn=txn)
        commit.split_left.CopyFrom(left.to_proto())
        commit.split_right.CopyFrom(right.to_proto())
        rec = await replica.propose_txn_op(commit)
        if rec is None or rec.status != TxnStatus.COMMITTED:
            raise AssertionError(f"split of range {range_id} at {key!r} did not commit: {rec}")
        self.ranges.append(right)
        return right

    # --- the Replica API --------------------------------------------------------------

    async def batch(
        self,
        node: int,
        range_id: int,
        ops: Iterable[replica_pb2.ReplicaOp],
        **fields: Any,
    ) -> replica_pb2.ReplicaBatchResponse:
        """One Replica.Batch call on `node`; raises the mapped error when it failed."""
        req = replica_pb2.ReplicaBatchRequest(range_id=range_id, ops=list(ops), **fields)
        resp = await self.replica(node, range_id).batch(req)
        if resp.HasField("error"):
            raise E.from_replica_error(resp.error)
        return resp

    async def put(self, node: int, range_id: int, key: bytes, value: bytes) -> types_pb2.Timestamp:
        resp = await self.batch(node, range_id, [put_op(key, value)])
        return resp.results[0].put.version

    async def get(self, node: int, range_id: int, key: bytes) -> bytes | None:
        resp = await self.batch(node, range_id, [get_op(key)])
        res = resp.results[0].get
        return res.kv.value if res.found else None


@contextlib.asynccontextmanager
async def started(
    base: Path,
    ranges: Sequence[RangeDescriptor],
    leaders: dict[int, int] | None = None,
    **options: Any,
) -> AsyncIterator[InProcCluster]:
    """An InProcCluster (`options` as its constructor's) started with a leaseholder for
    every range (`leaders`: range id -> node, where it matters), closed on exit."""
    cluster = InProcCluster(base, ranges, **options)
    await cluster.start()
    try:
        await cluster.elect_all(leaders)
        yield cluster
    finally:
        await cluster.close()


class InProcNodeClients(MemoryNodeClients):
    """The gateway's `MemoryNodeClients`, answered by an InProcCluster's replicas.

    Addresses are ``node-N``. `gate(node, range_id, request)`, when set, is awaited
    before a request reaches its node: a test parks a request there to place it in
    time.
    """

    def __init__(
        self,
        cluster: InProcCluster,
        gate: Callable[[int, int, replica_pb2.ReplicaBatchRequest], Awaitable[None]] | None = None,
    ) -> None:
        super().__init__(self._serve)
        self.cluster = cluster
        self.gate = gate

    async def _serve(
        self, address: str, req: replica_pb2.ReplicaBatchRequest
    ) -> replica_pb2.ReplicaBatchResponse:
        node = int(address.removeprefix("node-"))
        if self.gate is not None:
            await self.gate(node, req.range_id, req)
        if node in self.cluster.stopped:
            raise E.Unavailable(f"node {node} is down")
        replica = self.cluster.stores[node].replica(req.range_id)
        if replica is None:
            raise E.RangeNotFound(req.range_id, node)
        return await replica.batch(req)


def meta_lookup_of(cluster: InProcCluster) -> Callable[[bytes, int], Awaitable[LookupResult]]:
    """A MetaLookup answered from the stores' own descriptors (always current)."""

    async def lookup(key: bytes, prefetch: int) -> LookupResult:
        descs = cluster.descriptors()
        at = [i for i, d in enumerate(descs) if d.contains_key(key)]
        if not at:
            raise E.Unavailable(f"no range holds {key!r}")
        return LookupResult(descriptors=tuple(descs[at[0] : at[0] + 1 + prefetch]))

    return lookup
