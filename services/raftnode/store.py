"""The store: every range replica of one storage node, and what they share.

A store owns the two engines (raft log: always synced; state: per FSM sync
mode), one raft scheduler (group commit for all replicas), one raft transport
(lanes per peer), the ticker and the log truncation loop. It creates replicas
at bootstrap, at restart (from the descriptors in the state engine) and on
demand when a peer sends raft traffic for a range this node has never seen
(the message carries the descriptor, so the node knows its replica id).

Log truncation keeps `log_retain_entries` entries below the applied index, so
a briefly lagging follower catches up from the log and only a far-behind one
needs a snapshot. In NOSYNC mode the state engine is synced first: entries
may only leave the raft log once their effects are durable elsewhere.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from rangekv.common.descriptors import RangeDescriptor
from rangekv.common.hlc import HybridClock
from rangekv.raft import (
    Config,
    ConfState,
    HardState,
    Message,
    MessageType,
    RawNode,
    Snapshot,
    SnapshotMetadata,
)
from rangekv.raftnode.keys import data_span
from rangekv.raftnode.replica import RangeReplica, ReadOutcomeCounter, ReplicaContext, ReplicaLimits
from rangekv.replication.group import RaftGroup, RaftTiming
from rangekv.replication.log_engine import RaftLogEngine
from rangekv.replication.scheduler import RaftScheduler, SchedulerMetrics
from rangekv.replication.snapshot_data import decode_chunk, encode_chunks
from rangekv.replication.state_engine import (
    APPLIED_STATE,
    DESCRIPTOR,
    LOCAL_PREFIX,
    AppliedState,
    StateEngine,
    range_local_span,
)
from rangekv.replication.sync_mode import FsmSyncMode
from rangekv.v1 import types_pb2

log = logging.getLogger(__name__)

_CARRY_DESCRIPTOR = frozenset({MessageType.HEARTBEAT, MessageType.SNAP})

#: The raft log of a bootstrapped range starts after this index (a synthetic
#: snapshot), so "index 0" never has to mean anything.
INITIAL_INDEX = 10
INITIAL_TERM = 5


@dataclass(frozen=True)
class StoreConfig:
    """Everything a store needs to know about itself."""

    node_id: int
    data_dir: Path
    timing: RaftTiming = field(default_factory=RaftTiming)
    limits: ReplicaLimits = field(default_factory=ReplicaLimits)
    fsm_sync_mode: FsmSyncMode = FsmSyncMode.SYNC
    log_retain_entries: int = 2000
    truncate_interval: float = 5.0
    max_clock_offset_ns: int = 500_000_000
    snapshot_chunk_bytes: int = 1 << 20

    def __post_init__(self) -> None:
        if self.node_id <= 0:
            raise ValueError("node_id must be > 0")
        if self.log_retain_entries < 0:
            raise ValueError("log_retain_entries must be >= 0")


class Store:
    """The replicas of one node. Create, `open()`, then `start()` inside the loop."""

    def __init__(
        self,
        config: StoreConfig,
        *,
        resolve_address: Callable[[int], str],
        send_raft: Callable[[int, int, Message, types_pb2.RangeDescriptor | None], None],
        scheduler_metrics: SchedulerMetrics | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        wall_ns: Callable[[], int] = time.time_ns,
    ) -> None:
        self.config = config
        self._send_raft = send_raft
        self._monotonic = monotonic
        self.log_engine = RaftLogEngine.open(config.data_dir / "raftlog")
        self.state_engine = StateEngine.open(config.data_dir / "state", config.fsm_sync_mode)
        self.hlc = HybridClock(wall_ns, config.max_clock_offset_ns)
        self.ctx = ReplicaContext(
            node_id=config.node_id,
            engine=self.state_engine,
            hlc=self.hlc,
            limits=config.limits,
            resolve_address=resolve_address,
            monotonic=monotonic,
            reads=ReadOutcomeCounter(),
        )
        self.scheduler = RaftScheduler(
            self.log_engine, self.state_engine, self._send, metrics=scheduler_metrics
        )
        self._tasks: list[asyncio.Task[None]] = []
        self._rng = random.Random()

    # --- replicas --------------------------------------------------------------------

    def replica(self, range_id: int) -> RangeReplica | None:
        group = self.scheduler.group(range_id)
        return group if isinstance(group, RangeReplica) else None

    def replicas(self) -> list[RangeReplica]:
        return [g for g in self.scheduler.groups.values() if isinstance(g, RangeReplica)]

    def load_replicas(self) -> int:
        """Recreate every replica recorded in the state engine; returns how many."""
        count = 0
        for key, raw in self.state_engine.iterate(LOCAL_PREFIX, b"\x02"):
            if key[-1:] != DESCRIPTOR:
                continue
            desc = RangeDescriptor.from_proto(types_pb2.RangeDescriptor.FromString(raw))
            mine = desc.replica_on(self.config.node_id)
            if mine is None:
                continue
            self._add_replica(desc, mine.replica_id)
            count += 1
        return count

    def bootstrap(self, descriptor: RangeDescriptor) -> bool:
        """Create the first range on this node if the node holds no replica yet.

        Every initial node bootstraps the same descriptor at the same synthetic
        snapshot, so their raft groups start identical. Idempotent.
        """
        if self.replicas() or self.log_engine.group_ids():
            return False
        mine = descriptor.replica_on(self.config.node_id)
        if mine is None:
            raise ValueError(f"node {self.config.node_id} is not in {descriptor}")
        voters = tuple(sorted(r.replica_id for r in descriptor.replicas if r.type == 1))
        learners = tuple(sorted(r.replica_id for r in descriptor.replicas if r.type == 2))
        meta = SnapshotMetadata(INITIAL_INDEX, INITIAL_TERM, ConfState(voters, learners))
        batch = self.state_engine.new_batch()
        batch.put_local(descriptor.range_id, DESCRIPTOR, descriptor.to_proto().SerializeToString())
        batch.set_applied_state(descriptor.range_id, AppliedState(INITIAL_INDEX, INITIAL_TERM))
        self.state_engine.commit(batch, force_sync=True)
        log_batch = self.log_engine.new_batch()
        log_batch.apply_snapshot(descriptor.range_id, Snapshot(meta))
        # The term starts at the snapshot's: a log's terms never exceed the current term.
        log_batch.set_hard_state(
            descriptor.range_id, HardState(term=INITIAL_TERM, vote=0, commit=INITIAL_INDEX)
        )
        self.log_engine.commit(log_batch)
        self._add_replica(descriptor, mine.replica_id)
        log.info("bootstrapped range %d %s", descriptor.range_id, _span(descriptor))
        return True

    def _add_replica(self, desc: RangeDescriptor, replica_id: int) -> RangeReplica:
        applied_raw = self.state_engine.get_local(desc.range_id, APPLIED_STATE)
        applied = AppliedState.decode(applied_raw) if applied_raw else AppliedState(0, 0)
        timing = self.config.timing
        storage = self.log_engine.storage(desc.range_id)
        hard_state, _conf = storage.initial_state()
        # The core's applied index must lie within what its log knows; the state
        # machine's own applied index (possibly ahead, after a snapshot ingest)
        # is kept by the replica, which skips entries at or below it.
        core_applied = max(storage.snapshot().index, min(applied.index, hard_state.commit))
        raw_node = RawNode(
            Config(
                id=replica_id,
                election_tick=timing.election_ticks,
                heartbeat_tick=timing.heartbeat_ticks,
                applied=core_applied,
                lease_duration=timing.lease_duration,
                rng_seed=self._rng.getrandbits(32),
                max_inflight_msgs=256,
                max_size_per_msg=1 << 20,
            ),
            storage,
        )
        replica = RangeReplica(
            self.ctx, desc, replica_id, raw_node, applied, wake=self.scheduler.wake
        )
        self.scheduler.add_group(replica)
        return replica

    # --- raft traffic -------------------------------------------------------------------

    def _send(self, group: RaftGroup, messages: Sequence[Message]) -> None:
        assert isinstance(group, RangeReplica)
        desc = group.descriptor
        for msg in messages:
            target = desc.replica_by_id(msg.to)
            if target is None:
                continue  # a replica removed from the descriptor: nobody to send to
            # The descriptor lets a node create a replica it has never heard of. Only
            # heartbeats (periodic, small) and snapshots carry it: not every append.
            attach = msg.type in _CARRY_DESCRIPTOR
            self._send_raft(
                target.node_id, group.group_id, msg, group.descriptor_pb if attach else None
            )

    def handle_raft(
        self, messages: Sequence[tuple[int, Message, types_pb2.RangeDescriptor | None]]
    ) -> None:
        """Deliver received raft messages to their replicas (never blocks)."""
        for group_id, msg, desc_pb in messages:
            replica = self.replica(group_id)
            if replica is None:
                replica = self._maybe_create_uninitialized(group_id, msg, desc_pb)
                if replica is None:
                    continue
            if msg.to != replica.replica_id:
                continue  # addressed to an older incarnation of this node's replica
            replica.deliver(msg)

    def _maybe_create_uninitialized(
        self, group_id: int, msg: Message, desc_pb: types_pb2.RangeDescriptor | None
    ) -> RangeReplica | None:
        """A peer talks to a replica this node has not created yet (a replica added
        by a replica change): create it empty; the leader will send a snapshot."""
        if desc_pb is None or desc_pb.range_id != group_id:
            return None
        desc = RangeDescriptor.from_proto(desc_pb)
        mine = desc.replica_on(self.config.node_id)
        if mine is None or mine.replica_id != msg.to:
            return None
        log.info("creating replica %d of range %d on demand", mine.replica_id, group_id)
        return self._add_replica(desc, mine.replica_id)

    def report_unreachable(self, node_id: int, group_id: int, replica_id: int) -> None:
        replica = self.replica(group_id)
        if replica is not None:
            replica.report_unreachable(replica_id)

    def report_snapshot(self, node_id: int, group_id: int, replica_id: int, failed: bool) -> None:
        replica = self.replica(group_id)
        if replica is not None:
            replica.report_snapshot(replica_id, failed)

    # --- snapshots ------------------------------------------------------------------------

    async def snapshot_source(self, group_id: int, message: Message) -> AsyncIterator[bytes]:
        """Chunks of the range's state, read from ONE consistent engine snapshot."""
        replica = self.replica(group_id)
        if replica is None:
            raise LookupError(f"range {group_id} is not on this node")
        desc = replica.descriptor
        snap = self.state_engine.snapshot()
        try:
            local_lo, local_hi = range_local_span(group_id)
            data_lo, data_hi = data_span(desc.start_key, desc.end_key)

            def pairs() -> Iterator[tuple[bytes, bytes]]:
                yield from snap.iterate(local_lo, local_hi)
                yield from snap.iterate(data_lo, data_hi)

            for chunk in encode_chunks(pairs(), self.config.snapshot_chunk_bytes):
                yield chunk
                await asyncio.sleep(0)  # let heartbeats and requests through between chunks
        finally:
            snap.close()

    async def handle_snapshot(
        self,
        group_id: int,
        message: Message,
        desc_pb: types_pb2.RangeDescriptor,
        chunks: AsyncIterator[bytes],
    ) -> bool:
        """Ingest a streamed snapshot, then hand the SNAP message to raft."""
        desc = RangeDescriptor.from_proto(desc_pb)
        mine = desc.replica_on(self.config.node_id)
        if mine is None or mine.replica_id != message.to:
            return False
        # Create the replica first (empty raft state), so that its core never
        # starts with an applied index its log does not know.
        replica = self.replica(group_id) or self._add_replica(desc, mine.replica_id)
        batch = self.state_engine.new_batch()
        local_lo, local_hi = range_local_span(group_id)
        data_lo, data_hi = data_span(desc.start_key, desc.end_key)
        batch.delete_range(local_lo, local_hi)
        if data_hi is not None:
            batch.delete_range(data_lo, data_hi)
        async for chunk in chunks:
            for key, value in decode_chunk(chunk):
                batch.put(key, value)
        await asyncio.to_thread(self.state_engine.commit, batch, force_sync=True)
        applied_raw = self.state_engine.get_local(group_id, APPLIED_STATE)
        applied = AppliedState.decode(applied_raw) if applied_raw else AppliedState(0, 0)
        replica.applied_index = max(replica.applied_index, applied.index)
        stored = self.state_engine.get_local(group_id, DESCRIPTOR)
        if stored:
            replica.descriptor = RangeDescriptor.from_proto(
                types_pb2.RangeDescriptor.FromString(stored)
            )
        replica.deliver(message)
        return True

    # --- background loops -------------------------------------------------------------

    def start(self) -> None:
        self.scheduler.start()
        loop = asyncio.get_running_loop()
        self._tasks.append(loop.create_task(self._ticker(), name="raft-ticker"))
        self._tasks.append(loop.create_task(self._truncator(), name="raft-log-truncation"))

    async def _ticker(self) -> None:
        interval = self.config.timing.tick_interval
        next_at = self._monotonic()
        while True:
            next_at += interval
            delay = next_at - self._monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            else:
                next_at = self._monotonic()  # we fell behind: never tick in a burst
            self.scheduler.tick_all(self._monotonic())

    async def _truncator(self) -> None:
        while True:
            await asyncio.sleep(self.config.truncate_interval)
            try:
                await self.truncate_logs()
            except Exception:
                log.exception("raft log truncation failed")

    async def truncate_logs(self) -> int:
        """Truncate every raft log to `applied - log_retain_entries`; returns how many.

        The raft-log writes run inside the scheduler's section (`after_apply`),
        never beside it: the scheduler builds its group-commit batch against the
        engine's view of each group and commits it from a worker thread, so a
        truncation committed in between made that commit fail with
        ConcurrentBatchError, which stops the scheduler for good.
        """
        candidates = []
        for replica in self.replicas():
            target = replica.raw_node.raft.log.applied - self.config.log_retain_entries
            if target >= self.log_engine.storage(replica.group_id).first_index():
                candidates.append((replica, target))
        if not candidates:
            return 0
        if self.state_engine.sync_mode == FsmSyncMode.NOSYNC:
            # Durable through every target: they were applied before this sync.
            await asyncio.to_thread(self.state_engine.sync)
        done: asyncio.Future[int] = asyncio.get_running_loop().create_future()

        def truncate_now() -> None:
            try:
                count = self._truncate_now(candidates)
            except Exception as exc:  # reported by the truncator, not by the scheduler
                if not done.done():
                    done.set_exception(exc)
            else:
                if not done.done():
                    done.set_result(count)

        self.scheduler.after_apply(truncate_now)
        return await done

    def _truncate_now(self, candidates: list[tuple[RangeReplica, int]]) -> int:
        targets = []
        for replica, target in candidates:
            storage = self.log_engine.storage(replica.group_id)
            # The snapshot metadata records the CURRENT configuration, which is the
            # configuration at `target` only if no conf change was applied since.
            if (
                not replica.removed
                and target >= storage.first_index()
                and target >= replica.last_conf_index
            ):
                targets.append((replica, target))
        if not targets:
            return 0
        batch = self.log_engine.new_batch()
        for replica, target in targets:
            batch.create_snapshot(replica.group_id, target, replica.raw_node.conf_state())
        self.log_engine.commit(batch)
        for replica, target in targets:
            self.log_engine.compact(replica.group_id, target)
        return len(targets)

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        await self.scheduler.stop()
        for replica in self.replicas():
            replica.close("node stopping")
        self.state_engine.close()
        self.log_engine.close()


def _span(desc: RangeDescriptor) -> str:
    return f"[{desc.start_key!r}, {desc.end_key!r})"


def elapsed_since(t0: float) -> float:
    return time.monotonic() - t0
