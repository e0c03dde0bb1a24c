"""The raft scheduler: one loop drives every raft group of a process, with group commit.

Each iteration:
  1. drain queued inputs (ticks, messages, proposals, read-index requests) into
     the core of every group that has been woken;
  2. take a `Ready` from each group that has one;
  3. persist ALL their snapshots, log entries and hard states in ONE synced
     write to the raft-log engine (group commit: one fsync serves every range
     and every client waiting on it);
  4. send their messages: a leader's appends and heartbeats leave before the
     write (the core counts the leader's own log toward commit only once it
     is durable), everything else after it (a vote or an append response
     never leaves before what it promises is durable);
  5. apply ALL their committed entries into ONE state-engine batch, committed
     with the configured FSM sync mode (the raft log is the durability
     boundary; the applied index rides in the same batch, so replay is
     idempotent); a synced commit runs in a worker thread, an unsynced one
     inline;
  6. resolve the proposals and reads that the apply completed; advance.

While the synced write runs in a worker thread, handlers keep queueing inputs;
they are all taken by the next iteration, which is what batches concurrent
proposals into few raft entries and few fsyncs.

Gathering: when an iteration ends with inputs already waiting, the process is
busy, and more are on their way (peers' frames, the gateway's batches, whose
gRPC completions are queued on the event loop behind this task). The next
iteration then first yields to the loop, up to `gather_turns` times and only
while each turn brings new inputs, so that they join it: with many ranges,
each holding about one operation, that is what lets ranges share a log write,
a frame per peer and a batch of answers instead of paying them each. An
iteration that starts from idle (one client, a lone write) starts at once.

Invariant: only this loop calls into a group's RawNode (see group.py).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from rangekv.common.clock import Clock, SystemClock
from rangekv.common.gathering import gather
from rangekv.raft import HardState, Message, MessageType, Ready, Snapshot
from rangekv.replication.group import RaftGroup, Resolved
from rangekv.replication.mutations import Mutation
from rangekv.replication.proposals import settle
from rangekv.replication.state_engine import StateBatch
from rangekv.replication.sync_mode import FsmSyncMode

log = logging.getLogger(__name__)

T = TypeVar("T")

#: What a leader may send before its own log write is durable.
_LEADER_EARLY = frozenset({MessageType.APP, MessageType.HEARTBEAT})


class LogBatchLike(Protocol):
    def append(self, group_id: int, entries: Sequence[Any]) -> None: ...
    def set_hard_state(self, group_id: int, hs: HardState) -> None: ...
    def apply_snapshot(self, group_id: int, snap: Snapshot) -> None: ...


class LogEngineLike(Protocol):
    """What the scheduler needs of the raft-log engine (`log_engine.RaftLogEngine`)."""

    def new_batch(self) -> Any: ...
    def commit(self, batch: Any, *, sync: bool = True) -> None: ...


class StateEngineLike(Protocol):
    """What the scheduler needs of the state engine (`state_engine.StateEngine`)."""

    def new_batch(self) -> StateBatch: ...
    def commit(self, batch: StateBatch) -> None: ...
    @property
    def sync_mode(self) -> FsmSyncMode: ...


class SchedulerMetrics(Protocol):
    """What the scheduler reports; telemetry provides the real one."""

    def observe_iteration(
        self, groups: int, entries: int, applied: int, persist_s: float, apply_s: float
    ) -> None: ...

    def observe_gather(self, turns: int) -> None:
        """A busy iteration yielded `turns` event-loop turns before it began."""


@dataclass
class CountingMetrics:
    """An in-memory SchedulerMetrics for tests and benchmarks."""

    iterations: int = 0
    log_writes: int = 0
    entries: int = 0
    applied: int = 0
    persist_seconds: list[float] = field(default_factory=list)
    gather_turns: int = 0

    def observe_gather(self, turns: int) -> None:
        self.gather_turns += turns

    def observe_iteration(
        self, groups: int, entries: int, applied: int, persist_s: float, apply_s: float
    ) -> None:
        self.iterations += 1
        self.entries += entries
        self.applied += applied
        if persist_s:
            self.log_writes += 1
            self.persist_seconds.append(persist_s)


SendFn = Callable[[RaftGroup, Sequence[Message]], None]
Readies = list[tuple[RaftGroup, Ready]]


@dataclass(slots=True)
class _Persisted:
    """What the raft-log phase of an iteration wrote."""

    entries: int = 0
    seconds: float = 0.0
    #: Messages of each group already sent before the write (a leader's appends).
    sent_early: dict[int, list[Message]] = field(default_factory=dict)


class RaftScheduler:
    """Drives every RaftGroup of a process. Create one per process."""

    def __init__(
        self,
        log_engine: LogEngineLike,
        state_engine: StateEngineLike,
        send: SendFn,
        *,
        metrics: SchedulerMetrics | None = None,
        max_groups_per_iteration: int = 256,
        gather_turns: int = 0,
        blocking_io_in_thread: bool = True,
        mutation: Mutation = Mutation.NONE,
        clock: Clock | None = None,
    ) -> None:
        """`gather_turns`: at most this many event-loop turns a busy iteration waits
        for inputs on their way (module docstring; 0: none). `clock` times the
        phases for the metrics; `mutation` is test-only. (`HostConfig` validates
        the settings.)"""
        self._log_engine = log_engine
        self._state_engine = state_engine
        self._send = send
        self._metrics: SchedulerMetrics = metrics or CountingMetrics()
        self._max_groups = max_groups_per_iteration
        self._gather_turns = gather_turns
        self._in_thread = blocking_io_in_thread
        self._clock: Clock = clock if clock is not None else SystemClock()
        self._groups: dict[int, RaftGroup] = {}
        #: The groups the ticker visits: every group that is not quiesced.
        self._ticking: dict[int, RaftGroup] = {}
        self._dirty: dict[int, RaftGroup] = {}
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._post_apply: list[Callable[[], None]] = []
        self._in_iteration = False
        #: Every wake() so far: a gathering turn that adds none ends the gathering.
        self._wakes = 0
        #: Test-only (mutations.py); NONE in every real deployment.
        self._mutation = mutation

    # --- membership -----------------------------------------------------------------

    def add_group(self, group: RaftGroup) -> None:
        self._groups[group.group_id] = group
        self._ticking[group.group_id] = group
        self.wake(group)

    def remove_group(self, group_id: int) -> RaftGroup | None:
        group = self._groups.pop(group_id, None)
        self._dirty.pop(group_id, None)
        self._ticking.pop(group_id, None)
        if group is not None:
            group.close("replica removed from this node")
        return group

    def group(self, group_id: int) -> RaftGroup | None:
        return self._groups.get(group_id)

    @property
    def groups(self) -> dict[int, RaftGroup]:
        return self._groups

    def _wake_count(self) -> int:
        return self._wakes

    def wake(self, group: RaftGroup) -> None:
        self._dirty[group.group_id] = group
        self._wakes += 1
        self._wakeup.set()

    def tick_all(self, now: float) -> None:
        """Tick every group that is not quiesced (a quiesced one would ignore it)."""
        for group in self._ticking.values():
            group.tick(now)

    @property
    def ticking(self) -> int:
        """How many groups the ticker visits (the others are quiesced)."""
        return len(self._ticking)

    def quiesced_groups(self) -> list[RaftGroup]:
        return [g for gid, g in self._groups.items() if gid not in self._ticking]

    def _track_quiescence(self, group: RaftGroup) -> None:
        """After a drain: a quiesced group leaves the ticker's list, a woken one rejoins.
        (The QUIESCED_FOLLOWER_CAMPAIGNS mutation keeps ticking quiesced followers.)"""
        gid = group.group_id
        if group.quiesced and not (
            self._mutation is Mutation.QUIESCED_FOLLOWER_CAMPAIGNS and not group.is_leader
        ):
            self._ticking.pop(gid, None)
        elif gid not in self._ticking and gid in self._groups:
            self._ticking[gid] = group

    def after_apply(self, fn: Callable[[], None]) -> None:
        """Run `fn` once after the next apply batch is durable (e.g. split follow-up)."""
        self._post_apply.append(fn)
        self._wakeup.set()

    def call_in_section(self, fn: Callable[[], T]) -> asyncio.Future[T]:
        """Run `fn` inside the scheduler's section -- between iterations, when no
        apply is in flight and the cores may be called -- and hand its result
        (or exception) to the returned future."""
        fut: asyncio.Future[T] = asyncio.get_running_loop().create_future()

        def run() -> None:
            try:
                result = fn()
            except BaseException as exc:
                if not fut.done():
                    fut.set_exception(exc)
            else:
                if not fut.done():
                    fut.set_result(result)

        self.after_apply(run)
        return fut

    @property
    def idle(self) -> bool:
        """Nothing queued and no iteration running (tests step time only then)."""
        return not (self._in_iteration or self._dirty or self._post_apply or self._wakeup.is_set())

    # --- lifecycle ------------------------------------------------------------------

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="raft-scheduler")

    async def stop(self) -> None:
        self._stopping = True
        self._wakeup.set()
        if self._task is not None:
            await self._task
            self._task = None

    async def _run(self) -> None:
        busy = False  # whether inputs came while the last iteration ran
        while not self._stopping:
            await self._wakeup.wait()
            if busy:
                await self._gather()
            self._wakeup.clear()
            self._in_iteration = True
            try:
                await self.run_once()
            except Exception:
                # A failure here is a bug or a dead disk: nothing can be acknowledged
                # safely any more, so stop the process loudly rather than limp on.
                log.critical("raft scheduler iteration failed; stopping", exc_info=True)
                raise
            finally:
                self._in_iteration = False
            busy = self._wakeup.is_set()

    async def _gather(self) -> None:
        """Yield to the event loop while each turn brings new inputs, at most
        `gather_turns` turns, so that inputs already on their way join the next
        iteration (module docstring). Bounded: a steady stream of inputs delays an
        iteration by at most `gather_turns` turns, never starves it."""
        turns = await gather(self._gather_turns, self._wake_count)
        if turns:
            self._metrics.observe_gather(turns)

    # --- one iteration ----------------------------------------------------------------

    async def run_once(self) -> int:
        """One iteration over the woken groups; returns how many had a Ready."""
        readies = self._collect_readies()
        if not readies and not self._post_apply:
            return 0
        persisted = await self._persist(readies)  # 3. group commit of the raft log
        self._send_the_rest(readies, persisted)  # 4. after what they promise is durable
        resolved, n_applied, apply_s = await self._apply(readies)  # 5. one state batch
        for waiter, result in resolved:  # 6. acknowledge, then advance
            settle(waiter, result)
        for group, rd in readies:
            if group.advance(rd):
                self.wake(group)
        if self._post_apply:
            post, self._post_apply = self._post_apply, []
            for fn in post:
                fn()
        self._metrics.observe_iteration(
            len(readies), persisted.entries, n_applied, persisted.seconds, apply_s
        )
        return len(readies)

    def _collect_readies(self) -> Readies:
        """Steps 1 and 2: drain the woken groups' inputs, take their Readies."""
        if len(self._dirty) > self._max_groups:
            ids = list(self._dirty)[: self._max_groups]
            woken = [self._dirty.pop(i) for i in ids]
            self._wakeup.set()  # the rest go next iteration: the loop stays responsive
        else:
            woken = list(self._dirty.values())
            self._dirty.clear()
        readies: Readies = []
        for group in woken:
            if group.removed:
                continue
            group.drain_inputs()
            self._track_quiescence(group)
            rd = group.take_ready()
            if rd is not None:
                readies.append((group, rd))
        return readies

    async def _persist(self, readies: Readies) -> _Persisted:
        """Every Ready's snapshot, entries and hard state in ONE raft-log write."""
        out = _Persisted()
        log_batch = self._log_engine.new_batch()
        must_sync = False
        hard_states = False
        for group, rd in readies:
            if rd.snapshot is not None:
                log_batch.apply_snapshot(group.group_id, rd.snapshot)
            if rd.entries:
                log_batch.append(group.group_id, rd.entries)
                out.entries += len(rd.entries)
            if rd.hard_state is not None:
                log_batch.set_hard_state(group.group_id, rd.hard_state)
                hard_states = True
            must_sync = must_sync or rd.must_sync or rd.snapshot is not None
        out.sent_early = self._send_early(readies)
        if must_sync or out.entries:
            t0 = self._clock.monotonic()
            await self._blocking(self._log_engine.commit, log_batch)
            out.seconds = self._clock.monotonic() - t0
        elif hard_states:
            # Only commit indexes moved: nothing a message promises depends on them
            # (raft re-learns a lost commit index), so no fsync - but they ARE
            # written, so a restarted process resumes from them rather than from an
            # older commit index under what it already applied or truncated.
            self._log_engine.commit(log_batch, sync=False)
        return out

    def _send_early(self, readies: Readies) -> dict[int, list[Message]]:
        """A leader's appends and heartbeats may leave before its own log write:
        the core counts the leader's own log toward commit only after advance
        (i.e. once it is durable), so a quorum of durable copies still decides
        (Raft thesis 10.2.1). Followers overlap their fsync with the leader's."""
        early: dict[int, list[Message]] = {}
        for group, rd in readies:
            if rd.messages and group.is_leader:
                ahead = [m for m in rd.messages if m.type in _LEADER_EARLY]
                if ahead:
                    early[group.group_id] = ahead
                    self._send(group, ahead)
        return early

    def _send_the_rest(self, readies: Readies, persisted: _Persisted) -> None:
        for group, rd in readies:
            if not rd.messages:
                continue
            if group.group_id in persisted.sent_early:
                rest = [m for m in rd.messages if m.type not in _LEADER_EARLY]
            else:
                rest = list(rd.messages)
            if rest:
                self._send(group, rest)

    async def _apply(self, readies: Readies) -> tuple[Resolved, int, float]:
        """Every group's committed entries into ONE state batch, committed per the
        FSM sync mode; returns what to settle, how many entries, how long."""
        t1 = self._clock.monotonic()
        state_batch = self._state_engine.new_batch()
        resolved: Resolved = []
        n_applied = 0
        for group, rd in readies:
            if rd.committed_entries:
                resolved.extend(group.apply_entries(rd, state_batch))
                n_applied += len(rd.committed_entries)
        if self._mutation is Mutation.ACK_BEFORE_QUORUM:
            # TEST MUTATION: the leader acknowledges what only its own log holds.
            for group, rd in readies:
                if rd.entries and group.is_leader:
                    before = group.applied_index
                    resolved.extend(group.apply_unreplicated(rd, state_batch))
                    n_applied += group.applied_index - before
        if n_applied:
            if self._state_engine.sync_mode is FsmSyncMode.NOSYNC:
                # No fsync: a write into the memtable and the WAL's page cache
                # costs less than the worker-thread round trip would.
                self._state_engine.commit(state_batch)
            else:
                await self._blocking(self._state_engine.commit, state_batch)
        return resolved, n_applied, self._clock.monotonic() - t1

    async def _blocking(self, fn: Callable[[Any], None], arg: Any) -> None:
        """A synced engine write, in a worker thread when the engines are on a disk.

        Measured, and kept for that reason: writing inline instead saves the
        thread round trip (about 40 us, and some CPU per put at one client), but
        cost a quarter to a third of put throughput at 64 clients over 64 ranges
        (inline state commits alone, a tenth), and yielding to the loop once
        after `_send_early` did not win it back. Not because the loop runs
        during the fsync: a synced rocksdict `write` holds the GIL through it
        (`benchmarks/fsync_loop_stall.py`; `rangekv.replication.rocks` says what
        was tried). The appends `_send_early` queued usually leave before the
        worker thread takes the GIL (traced at one client).
        """
        if self._in_thread:
            await asyncio.to_thread(fn, arg)
        else:
            fn(arg)
