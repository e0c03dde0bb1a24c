"""A process's raft groups and the machinery they share: the GroupHost.

Both raftnode (many ranges) and metarange (one meta group) host raft groups
the same way: one raft-log engine (always synced), one state engine (FSM sync
mode), one scheduler (group commit), a ticker, log truncation, and snapshot
streaming from a consistent engine snapshot. `GroupHost` is that machinery;
a service subclasses it to say how replica ids map to nodes (`route`) and
which state-engine spans a group's snapshot holds (`snapshot_spans`).

Log truncation keeps `log_retain_entries` entries below the applied index, so
a briefly lagging follower catches up from the log and only a far-behind one
needs a snapshot. In NOSYNC mode the state engine is synced first: entries
may only leave the raft log once their effects are durable elsewhere.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from rangekv.common.tasks import cancel_and_wait
from rangekv.raft import Config, Message, RawNode
from rangekv.replication.group import RaftGroup, RaftTiming
from rangekv.replication.log_engine import RaftLogEngine
from rangekv.replication.mutations import Mutation
from rangekv.replication.scheduler import RaftScheduler, SchedulerMetrics
from rangekv.replication.snapshot_data import decode_chunk, encode_chunks
from rangekv.replication.state_engine import (
    APPLIED_STATE,
    AppliedState,
    StateEngine,
    range_local_key,
    range_local_span,
)
from rangekv.replication.sync_mode import FsmSyncMode
from rangekv.v1 import types_pb2

log = logging.getLogger(__name__)

SendRaft = Callable[[int, int, Message, types_pb2.RangeDescriptor | None], None]
Span = tuple[bytes, bytes | None]


@dataclass(frozen=True)
class HostConfig:
    """What every raft-hosting process configures the same way."""

    node_id: int
    data_dir: Path
    timing: RaftTiming = field(default_factory=RaftTiming)
    fsm_sync_mode: FsmSyncMode = FsmSyncMode.SYNC
    log_retain_entries: int = 2000
    truncate_interval: float = 5.0
    snapshot_chunk_bytes: int = 1 << 20
    #: Bytes of proposals a leader holds uncommitted before refusing more
    #: (RESOURCE_EXHAUSTED; raft's max_uncommitted_entries_size).
    max_uncommitted_bytes: int = 64 << 20
    #: Test-only deliberately broken behaviour (mutations.py); NONE otherwise.
    mutation: Mutation = Mutation.NONE
    #: Test-only: kill -9 loses unsynced state writes like a power cut
    #: (RANGEKV_TEST_POWER_LOSS; StateEngine.open explains).
    power_loss: bool = False
    #: Test-only: seconds this node waits before sending each snapshot chunk
    #: (RANGEKV_TEST_SNAPSHOT_DELAY_MS), so a chaos schedule can make a stale
    #: snapshot arrive after the follower was caught up another way.
    snapshot_send_delay: float = 0.0

    def __post_init__(self) -> None:
        if self.node_id <= 0:
            raise ValueError("node_id must be > 0")
        if self.log_retain_entries < 0:
            raise ValueError("log_retain_entries must be >= 0")
        if self.truncate_interval <= 0:
            raise ValueError("truncate_interval must be > 0")


Engines = tuple[RaftLogEngine, StateEngine]


def open_rocksdb_engines(config: HostConfig) -> Engines:
    """The process's two engines on disk, under `config.data_dir`."""
    log_engine = RaftLogEngine.open(config.data_dir / "raftlog")
    state_engine = StateEngine.open(
        config.data_dir / "state", config.fsm_sync_mode, power_loss=config.power_loss
    )
    return log_engine, state_engine


class GroupHost:
    """Engines, scheduler, ticker, truncation and snapshots for a process's groups."""

    def __init__(
        self,
        config: HostConfig,
        *,
        send_raft: SendRaft,
        scheduler_metrics: SchedulerMetrics | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        open_engines: Callable[[HostConfig], Engines] | None = None,
    ) -> None:
        self.host_config = config
        self._send_raft = send_raft
        self._monotonic = monotonic
        self.log_engine, self.state_engine = (open_engines or open_rocksdb_engines)(config)
        self.scheduler = RaftScheduler(
            self.log_engine,
            self.state_engine,
            self._send,
            metrics=scheduler_metrics,
            mutation=config.mutation,
        )
        self._tasks: list[asyncio.Task[None]] = []
        self._rng = random.Random()

    # --- hooks --------------------------------------------------------------------------

    def route(
        self, group: RaftGroup, msg: Message
    ) -> tuple[int, types_pb2.RangeDescriptor | None] | None:
        """(node id, descriptor to attach or None) for an outgoing message; None drops it."""
        raise NotImplementedError

    def snapshot_spans(self, group: RaftGroup) -> list[Span]:
        """The state-engine spans a snapshot of `group` consists of."""
        raise NotImplementedError

    # --- groups -------------------------------------------------------------------------

    def applied_state(self, group_id: int) -> AppliedState:
        raw = self.state_engine.get_local(group_id, APPLIED_STATE)
        return AppliedState.decode(raw) if raw else AppliedState(0, 0)

    def new_raw_node(self, group_id: int, replica_id: int, applied: AppliedState) -> RawNode:
        """A RawNode over the group's stored log, resuming where the state machine is."""
        timing = self.host_config.timing
        storage = self.log_engine.storage(group_id)
        hard_state, _conf = storage.initial_state()
        # The core's applied index must lie within what its log knows; the state
        # machine's own applied index (possibly ahead, after a snapshot ingest)
        # is kept by the group, which skips entries at or below it.
        core_applied = max(storage.snapshot().index, min(applied.index, hard_state.commit))
        return RawNode(
            Config(
                id=replica_id,
                election_tick=timing.election_ticks,
                heartbeat_tick=timing.heartbeat_ticks,
                applied=core_applied,
                lease_duration=timing.lease_duration,
                rng_seed=self._rng.getrandbits(32),
                max_inflight_msgs=256,
                max_size_per_msg=1 << 20,
                max_uncommitted_entries_size=self.host_config.max_uncommitted_bytes,
            ),
            storage,
        )

    # --- raft traffic -------------------------------------------------------------------

    def _send(self, group: RaftGroup, messages: Sequence[Message]) -> None:
        for msg in messages:
            route = self.route(group, msg)
            if route is not None:
                self._send_raft(route[0], group.group_id, msg, route[1])

    def report_unreachable(self, node_id: int, group_id: int, replica_id: int) -> None:
        group = self.scheduler.group(group_id)
        if group is not None:
            group.report_unreachable(replica_id)

    def report_snapshot(self, node_id: int, group_id: int, replica_id: int, failed: bool) -> None:
        group = self.scheduler.group(group_id)
        if group is not None:
            group.report_snapshot(replica_id, failed)

    # --- snapshots ------------------------------------------------------------------------

    async def snapshot_source(self, group_id: int, message: Message) -> AsyncIterator[bytes]:
        """Chunks of the group's state, read from ONE consistent engine snapshot."""
        group = self.scheduler.group(group_id)
        if group is None:
            raise LookupError(f"group {group_id} is not on this node")
        spans = self.snapshot_spans(group)
        snap = self.state_engine.snapshot()
        log.info(
            "snapshot of group %d for replica %d: streaming state at applied %d",
            group_id,
            message.to,
            group.applied_index,
        )
        try:

            def pairs() -> Iterator[tuple[bytes, bytes]]:
                for lo, hi in spans:
                    yield from snap.iterate(lo, hi)

            delay = self.host_config.snapshot_send_delay
            for chunk in encode_chunks(pairs(), self.host_config.snapshot_chunk_bytes):
                if delay:
                    await asyncio.sleep(delay)  # TEST ONLY: a slow snapshot stream
                yield chunk
                await asyncio.sleep(0)  # let heartbeats and requests through between chunks
        finally:
            snap.close()

    async def install_snapshot(
        self,
        group: RaftGroup,
        message: Message,
        spans: Sequence[Span],
        chunks: AsyncIterator[bytes],
        adopt: Callable[[dict[bytes, bytes]], None] | None = None,
    ) -> bool:
        """Install a streamed snapshot of `group` (its state spans and the SNAP
        message); True once raft has seen the message.

        Invariant: a replica's applied index never goes backwards, in memory or on
        disk. The stream is gathered into one batch off the scheduler; the checks
        (`RaftGroup.snapshot_refusal`: current term, raft would adopt it, the
        streamed state is newer than what was applied) and the install run in the
        scheduler's section, where no apply can interleave: the state (synced), the
        applied index and the core's restore go in together. A snapshot that fails
        the checks installs no state, but raft still gets its message (it restores
        only a log it lacks, over state that is at least as new). A crash between the
        state write and the raft log's snapshot write restarts with the applied
        index ahead of the log, which the group already handles (it skips entries
        at or below its applied index). `adopt` sees the streamed range-local pairs
        (descriptor, GC threshold) once installed."""
        batch = self.state_engine.new_batch()
        for lo, hi in spans:
            if hi is not None:
                batch.delete_range(lo, hi)
        local_lo, local_hi = range_local_span(group.group_id)
        local: dict[bytes, bytes] = {}
        async for chunk in chunks:
            for key, value in decode_chunk(chunk):
                batch.put(key, value)
                if local_lo <= key < local_hi:
                    local[key] = value
        raw = local.get(range_local_key(group.group_id, APPLIED_STATE))
        streamed = AppliedState.decode(raw) if raw else AppliedState(0, 0)
        if self.host_config.mutation is Mutation.STALE_SNAPSHOT_INGEST:
            # TEST MUTATION: the old unchecked ingest, beside the scheduler.
            log.info(
                "snapshot of group %d: ingesting state at applied %d unchecked (mutation)",
                group.group_id,
                streamed.index,
            )
            await asyncio.to_thread(self.state_engine.commit, batch, force_sync=True)
            group.applied_index = max(group.applied_index, streamed.index)
            if adopt is not None:
                adopt(local)
            group.deliver(message)
            return True

        def install() -> bool:
            if group.removed or self.scheduler.group(group.group_id) is not group:
                return False
            why = group.snapshot_refusal(message, streamed.index)
            if why is None:
                log.info(
                    "snapshot of group %d: installing state at applied %d",
                    group.group_id,
                    streamed.index,
                )
                self.state_engine.commit(batch, force_sync=True)
                group.applied_index = streamed.index
                if adopt is not None:
                    adopt(local)
            else:
                log.info("snapshot of group %d: state not installed: %s", group.group_id, why)
            # Raft sees the message either way: it restores only what it lacks, and
            # its answer tells the leader where this replica stands (a leader never
            # told would keep sending snapshots).
            group.raw_node.step(message)
            self.scheduler.wake(group)
            return True

        return await self.scheduler.call_in_section(install)

    # --- background loops -------------------------------------------------------------

    def start(self) -> None:
        self.scheduler.start()
        loop = asyncio.get_running_loop()
        self._tasks.append(loop.create_task(self._ticker(), name="raft-ticker"))
        self._tasks.append(loop.create_task(self._truncator(), name="raft-log-truncation"))

    async def _ticker(self) -> None:
        interval = self.host_config.timing.tick_interval
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
            await asyncio.sleep(self.host_config.truncate_interval)
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
        for replica in self.scheduler.groups.values():
            target = replica.raw_node.raft.log.applied - self.host_config.log_retain_entries
            if self._truncatable(replica.group_id, target):
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

    def _truncatable(self, group_id: int, target: int) -> bool:
        """Whether truncating through `target` removes anything. Not when a snapshot
        at or above it is held already: after a snapshot from the leader the core's
        applied index (which targets derive from) can lag it, and creating an
        older snapshot is refused (SnapshotOutOfDate, logged every interval)."""
        storage = self.log_engine.storage(group_id)
        return target >= storage.first_index() and target > storage.snapshot().index

    def _truncate_now(self, candidates: list[tuple[RaftGroup, int]]) -> int:
        targets = []
        for replica, target in candidates:
            # The snapshot metadata records the CURRENT configuration, which is the
            # configuration at `target` only if no conf change was applied since.
            if (
                not replica.removed
                and self._truncatable(replica.group_id, target)
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
            log.debug("raft log of group %d truncated through %d", replica.group_id, target)
        return len(targets)

    async def stop(self) -> None:
        await cancel_and_wait(self._tasks)
        self._tasks.clear()
        await self.scheduler.stop()
        for group in list(self.scheduler.groups.values()):
            group.close("node stopping")
        self.state_engine.close()
        self.log_engine.close()
