"""A process's raft groups and the machinery they share: the GroupHost.

Both raftnode (many ranges) and metarange (one meta group) host raft groups
the same way: one raft-log engine (always synced), one state engine (FSM sync
mode), one scheduler (group commit), a ticker, log truncation, and snapshot
streaming from a consistent engine snapshot. `GroupHost` is that machinery.
A service composes it with what is its own: a `Router` (how replica ids map
to nodes), the `StateMachine` and `CommandMerger` of each group it adds, and
the `HostSeams` it is handed (raft sender, engine opener, clock, random
source, test faults).

Log truncation keeps `log_retain_entries` entries below the applied index, so
a briefly lagging follower catches up from the log and only a far-behind one
needs a snapshot. In NOSYNC mode the state engine is synced first: entries
may only leave the raft log once their effects are durable elsewhere.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from rangekv.common.clock import Clock
from rangekv.common.tasks import cancel_and_wait
from rangekv.raft import Config, Message, NoLiveness, RawNode
from rangekv.replication.engines import EngineOpener
from rangekv.replication.group import RaftGroup
from rangekv.replication.liveness import GroupLiveness, NodeLiveness
from rangekv.replication.mutations import NO_FAULTS, Mutation, TestFaults
from rangekv.replication.proposals import CommandMerger
from rangekv.replication.raft_network import RaftSender
from rangekv.replication.scheduler import RaftScheduler, SchedulerMetrics
from rangekv.replication.snapshot_data import decode_chunk, encode_chunks
from rangekv.replication.state_engine import (
    APPLIED_STATE,
    AppliedState,
    range_local_key,
    range_local_span,
)
from rangekv.replication.state_machine import Span, StateMachine
from rangekv.replication.sync_mode import FsmSyncMode
from rangekv.replication.timing import RaftTiming
from rangekv.v1 import types_pb2

__all__ = ["GroupHost", "HostConfig", "HostSeams", "Route", "Router"]

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Where an outgoing message goes: (node id, descriptor to attach or None).
Route = tuple[int, types_pb2.RangeDescriptor | None]


class Router(Protocol):
    """How a service's replica ids map to nodes."""

    def route(self, group_id: int, msg: Message) -> Route | None:
        """Where `msg` of group `group_id` goes; None drops it (nobody to send to)."""
        ...


@dataclass(frozen=True)
class HostConfig:
    """What every raft-hosting process configures the same way."""

    node_id: int
    timing: RaftTiming = field(default_factory=RaftTiming)
    fsm_sync_mode: FsmSyncMode = FsmSyncMode.SYNC
    log_retain_entries: int = 2000
    truncate_interval: float = 5.0
    snapshot_chunk_bytes: int = 1 << 20
    #: Bytes of proposals a leader holds uncommitted before refusing more
    #: (RESOURCE_EXHAUSTED; raft's max_uncommitted_entries_size).
    max_uncommitted_bytes: int = 64 << 20
    #: A leader idle for this many ticks quiesces its group (0: never). Needs the
    #: node-level liveness exchange (`GroupHost.enable_liveness`) to keep leases.
    quiesce_after_ticks: int = 0
    #: Followers learn a moved commit index from the next append or heartbeat
    #: rather than from an empty append of its own (raft `Config.lazy_commit`);
    #: drivers publish it at once where a follower should apply promptly (a split).
    #: raftnode turns it on; the meta range keeps it off, because its followers
    #: answer inconsistent descriptor lookups and should not lag a heartbeat.
    lazy_commit: bool = False
    #: A leader sends no heartbeat to a follower it sent an append since the last
    #: one and that answered it (raft `Config.lazy_heartbeat`): a busy group's
    #: appends carry its lease rounds. Needs `RaftTiming.check_lazy_heartbeat`.
    #: raftnode turns it on; the meta range keeps etcd's way.
    lazy_heartbeat: bool = False
    #: A busy scheduler waits at most this many event-loop turns for inputs on
    #: their way before an iteration (scheduler.py, "Gathering"; 0: never).
    #: raftnode sets it; the meta range, one group, has nothing to gather.
    gather_turns: int = 0

    def __post_init__(self) -> None:
        if self.node_id <= 0:
            raise ValueError("node_id must be > 0")
        if self.log_retain_entries < 0:
            raise ValueError("log_retain_entries must be >= 0")
        if self.truncate_interval <= 0:
            raise ValueError("truncate_interval must be > 0")
        if self.quiesce_after_ticks < 0:
            raise ValueError("quiesce_after_ticks must be >= 0")
        if self.gather_turns < 0:
            raise ValueError("gather_turns must be >= 0")
        if self.lazy_heartbeat:
            self.timing.check_lazy_heartbeat()


@dataclass(frozen=True)
class HostSeams:
    """What a host is given from outside: every I/O seam, each with an in-memory twin.

    `sender`: where outgoing raft messages go (`RaftTransport` | `MemoryNetwork`);
    `open_engines`: the engines (`RocksEngines` | `MemoryEngines`); `clock` and
    `rng` (seeded): time and chance; `faults`: test-only behaviour (`NO_FAULTS`
    in production); `scheduler_metrics`: the scheduler's figures (telemetry)."""

    sender: RaftSender
    open_engines: EngineOpener
    clock: Clock
    rng: random.Random
    faults: TestFaults = NO_FAULTS
    scheduler_metrics: SchedulerMetrics | None = None


class GroupHost:
    """Engines, scheduler, ticker, truncation and snapshots for a process's groups."""

    def __init__(self, config: HostConfig, router: Router, seams: HostSeams) -> None:
        self.config = config
        self._router = router
        self._sender = seams.sender
        self.clock = seams.clock
        self._rng = seams.rng
        self.faults = seams.faults
        self.log_engine, self.state_engine = seams.open_engines(config.fsm_sync_mode)
        self._blocking_io = seams.open_engines.blocking
        self.scheduler = RaftScheduler(
            self.log_engine,
            self.state_engine,
            self._send,
            metrics=seams.scheduler_metrics,
            gather_turns=config.gather_turns,
            blocking_io_in_thread=self._blocking_io,
            mutation=self.faults.mutation,
            clock=self.clock,
        )
        self._tasks: list[asyncio.Task[None]] = []
        #: Node-level liveness (quiescence on: `enable_liveness`), else None.
        self.liveness: NodeLiveness | None = None

    # --- quiescence -----------------------------------------------------------------------

    def enable_liveness(self, peers: Callable[[], Iterable[int]]) -> NodeLiveness:
        """Start the node-level liveness exchange (liveness.py) with `peers()`, the
        nodes this one shares groups with; groups added afterwards with `node_of`
        may quiesce (`HostConfig.quiesce_after_ticks`)."""
        self.liveness = NodeLiveness(
            self.config.node_id,
            self._sender,
            self.config.timing,
            self._rng,
            self.clock.monotonic(),
            peers=peers,
            on_lapse=self._wake_followers_led_by,
            on_new_session=self._wake_leaders_followed_on,
        )
        return self.liveness

    def handle_liveness(self, msg: Message) -> None:
        """A message of `LIVENESS_GROUP` (dropped while liveness is off)."""
        if self.liveness is not None:
            self.liveness.handle(msg, self.clock.monotonic())

    def _wake_followers_led_by(self, node_id: int) -> None:
        """`node_id` was declared unreachable (a new session began toward it): wake
        every quiesced follower whose leader is there (the only time a driver may)."""
        woken = 0
        for group in self.scheduler.quiesced_groups():
            view = group.raw_node.raft.liveness
            if group.is_leader or not isinstance(view, GroupLiveness):
                continue
            lead = group.leader()
            if lead and view.node_of(lead) == node_id:
                group.wake_follower()
                woken += 1
        if woken:
            log.info("node %d unreachable: woke %d quiesced followers", node_id, woken)

    def _wake_leaders_followed_on(self, node_id: int) -> None:
        """`node_id` began a new session toward this node: it declared this node
        unreachable and woke its followers of our quiesced leaders. Wake those
        leaders so that they heartbeat before the followers time out and campaign
        (a transient lapse -- a stalled process -- must not cost every range an
        election)."""
        woken = 0
        for group in self.scheduler.quiesced_groups():
            view = group.raw_node.raft.liveness
            if not group.is_leader or not isinstance(view, GroupLiveness):
                continue
            cs = group.conf_state()
            if any(view.node_of(r) == node_id for r in (*cs.voters, *cs.learners)):
                group.wake_leader()
                woken += 1
        if woken:
            log.info("node %d began a new liveness session: woke %d leaders", node_id, woken)

    # --- groups -------------------------------------------------------------------------

    def applied_state(self, group_id: int) -> AppliedState:
        raw = self.state_engine.get_local(group_id, APPLIED_STATE)
        return AppliedState.decode(raw) if raw else AppliedState(0, 0)

    def add_group(
        self,
        group_id: int,
        replica_id: int,
        state_machine: StateMachine,
        *,
        merger: CommandMerger[Any] | None = None,
        on_role_change: Callable[[], None] | None = None,
        node_of: Callable[[int], int | None] | None = None,
    ) -> RaftGroup:
        """Start driving group `group_id`'s replica `replica_id` over its stored log,
        resuming where the state machine's durable state is. `node_of` maps the
        group's replica ids to node ids: with it (and liveness on) the group may
        quiesce."""
        applied = self.applied_state(group_id)
        view = (
            self.liveness.view(node_of)
            if self.liveness is not None and node_of is not None
            else None
        )
        group = RaftGroup(
            group_id,
            self._raw_node(group_id, replica_id, applied, view),
            state_machine,
            wake=self.scheduler.wake,
            incarnation=self._rng.getrandbits(63) | 1,
            applied_index=applied.index,
            merger=merger,
            on_role_change=on_role_change,
            mutation=self.faults.mutation,
            quiesce_after_ticks=self.config.quiesce_after_ticks if view is not None else 0,
        )
        self.scheduler.add_group(group)
        return group

    def _raw_node(
        self,
        group_id: int,
        replica_id: int,
        applied: AppliedState,
        liveness: GroupLiveness | None,
    ) -> RawNode:
        timing = self.config.timing
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
                max_uncommitted_entries_size=self.config.max_uncommitted_bytes,
                lazy_commit=self.config.lazy_commit,
                lazy_heartbeat=self.config.lazy_heartbeat,
            ),
            storage,
            liveness if liveness is not None else NoLiveness(),
        )

    # --- raft traffic -------------------------------------------------------------------

    def _send(self, group: RaftGroup, messages: Sequence[Message]) -> None:
        for msg in messages:
            route = self._router.route(group.group_id, msg)
            if route is not None:
                self._sender.send(route[0], group.group_id, msg, route[1])

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
        spans = group.state_machine.snapshot_spans()
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

            delay = self.faults.snapshot_send_delay
            for chunk in encode_chunks(pairs(), self.config.snapshot_chunk_bytes):
                if delay:
                    await self.clock.sleep(delay)  # TEST ONLY: a slow snapshot stream
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
        at or below its applied index). The state machine reloads what it keeps in
        memory from the streamed range-local pairs once installed."""
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
        if self.faults.mutation is Mutation.STALE_SNAPSHOT_INGEST:
            # TEST MUTATION: the old unchecked ingest, beside the scheduler.
            log.info(
                "snapshot of group %d: ingesting state at applied %d unchecked (mutation)",
                group.group_id,
                streamed.index,
            )
            await self.run_blocking(lambda: self.state_engine.commit(batch, force_sync=True))
            group.applied_index = max(group.applied_index, streamed.index)
            group.state_machine.snapshot_installed(local)
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
                group.state_machine.snapshot_installed(local)
            else:
                log.info(
                    "snapshot of group %d: state at applied %d not installed: %s",
                    group.group_id,
                    streamed.index,
                    why,
                )
            # Raft sees the message either way: it restores only what it lacks, and
            # its answer tells the leader where this replica stands (a leader never
            # told would keep sending snapshots).
            group.step_snapshot(message)
            return True

        return await self.scheduler.call_in_section(install)

    async def run_blocking(self, fn: Callable[[], T]) -> T:
        """`fn()` (engine I/O): in a worker thread when the engines block on a disk,
        inline otherwise (see `EngineOpener.blocking`)."""
        if self._blocking_io:
            return await asyncio.to_thread(fn)
        return fn()

    # --- background loops -------------------------------------------------------------

    def start(self) -> None:
        self.scheduler.start()
        self.spawn(self._ticker(), "raft-ticker")
        self.spawn(self._truncator(), "raft-log-truncation")

    def spawn(self, coro: Any, name: str) -> None:
        """Run `coro` until `stop` (the host's background loops and its owner's)."""
        self._tasks.append(asyncio.get_running_loop().create_task(coro, name=name))

    async def _ticker(self) -> None:
        interval = self.config.timing.tick_interval
        next_at = self.clock.monotonic()
        while True:
            next_at += interval
            delay = next_at - self.clock.monotonic()
            if delay > 0:
                await self.clock.sleep(delay)
            else:
                next_at = self.clock.monotonic()  # we fell behind: never tick in a burst
            self.tick(self.clock.monotonic())

    def tick(self, now: float) -> None:
        """One tick: every group that is not quiesced, and the liveness exchange."""
        self.scheduler.tick_all(now)
        if self.liveness is not None:
            self.liveness.on_tick(now)

    async def _truncator(self) -> None:
        while True:
            await self.clock.sleep(self.config.truncate_interval)
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
        for group in self.scheduler.groups.values():
            target = group.raw_node.applied_index() - self.config.log_retain_entries
            if self._truncatable(group.group_id, target):
                candidates.append((group, target))
        if not candidates:
            return 0
        if (
            self.state_engine.sync_mode == FsmSyncMode.NOSYNC
            and self.faults.mutation is not Mutation.TRUNCATE_BEFORE_SYNC  # TEST MUTATION
        ):
            # Durable through every target: they were applied before this sync.
            await self.run_blocking(self.state_engine.sync)
        return await self.scheduler.call_in_section(lambda: self._truncate_now(candidates))

    def _truncatable(self, group_id: int, target: int) -> bool:
        """Whether truncating through `target` removes anything. Not when a snapshot
        at or above it is held already: after a snapshot from the leader the core's
        applied index (which targets derive from) can lag it, and creating an
        older snapshot is refused (SnapshotOutOfDate, logged every interval)."""
        storage = self.log_engine.storage(group_id)
        return target >= storage.first_index() and target > storage.snapshot().index

    def _truncate_now(self, candidates: list[tuple[RaftGroup, int]]) -> int:
        targets = []
        for group, target in candidates:
            # The snapshot metadata records the CURRENT configuration, which is the
            # configuration at `target` only if no conf change was applied since.
            if (
                not group.removed
                and self._truncatable(group.group_id, target)
                and target >= group.last_conf_index
            ):
                targets.append((group, target))
        if not targets:
            return 0
        batch = self.log_engine.new_batch()
        for group, target in targets:
            batch.create_snapshot(group.group_id, target, group.conf_state())
        self.log_engine.commit(batch)
        for group, target in targets:
            self.log_engine.compact(group.group_id, target)
            log.debug("raft log of group %d truncated through %d", group.group_id, target)
        return len(targets)

    async def stop(self) -> None:
        await cancel_and_wait(self._tasks)
        self._tasks.clear()
        await self.scheduler.stop()
        for group in list(self.scheduler.groups.values()):
            group.close("node stopping")
        self.state_engine.close()
        self.log_engine.close()
