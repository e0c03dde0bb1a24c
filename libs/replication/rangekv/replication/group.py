"""One raft group hosted by a process: the seam between asyncio callers and the pure core.

A `RaftGroup` owns a `rangekv.raft.RawNode` and is the only object that touches
it. Callers (gRPC handlers, the transport, the ticker) never call the core
directly: they queue inputs here (messages, ticks, proposals, read-index
requests, transport reports) and wake the scheduler. The scheduler then, in one
synchronous section per iteration, drains every queued input into the core,
takes a `Ready`, persists it with every other group's in one synced write,
sends, applies, and advances. Keeping every core call inside that section is
what makes the process a faithful driver of a deterministic state machine.

What the log means is not the group's business: it applies committed entries
through its `StateMachine` (state_machine.py), and merges concurrent writes
through the serving layer's `CommandMerger` (proposals.py). The group is
final: it is composed with those, never subclassed.

Proposals are resolved when the proposing node applies them (a write is
acknowledged only after commit by a quorum AND apply by the leaseholder).
Each proposal's entry carries a tag (process incarnation + counter) so that
after a restart no replayed entry can resolve a new caller's future.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Callable, Sequence
from typing import Any, Final, final

from rangekv.common import errors as E
from rangekv.raft import (
    ConfChange,
    ConfState,
    Entry,
    EntryType,
    LeaseState,
    LeaseStatus,
    Message,
    ProposalDropped,
    RawNode,
    Ready,
    StateType,
    Status,
    UncommittedSizeExceeded,
)
from rangekv.replication.mutations import Mutation
from rangekv.replication.proposals import CommandMerger, ProposalQueue, Waiter, settle
from rangekv.replication.state_engine import StateBatch
from rangekv.replication.state_machine import StateMachine

__all__ = [
    "TAG_SIZE",
    "GroupError",
    "NotLeaderNow",
    "Overloaded",
    "ProposalAbandoned",
    "RaftGroup",
]

_TAG: Final = struct.Struct(">QQ")  # incarnation, sequence
TAG_SIZE: Final = _TAG.size


class GroupError(Exception):
    """Base of the errors a RaftGroup hands to the callers of its futures."""


class ProposalAbandoned(GroupError):
    """The proposal may or may not commit: this replica lost track of it
    (leadership lost, group removed). Its outcome is unknown."""


class NotLeaderNow(GroupError):
    """The proposal or read was refused before it entered the log; nothing was done."""


class Overloaded(GroupError):
    """The leader's uncommitted log is over its byte budget: the proposal was refused
    before it entered the log (nothing was done); retry after a short pause."""


#: What a resolved entry hands back: who waits, and what they get.
Resolved = list[tuple[Waiter, object]]


@final
class RaftGroup:
    """A raft group's core, its queued inputs, its pending proposals and its read waiters."""

    def __init__(
        self,
        group_id: int,
        raw_node: RawNode,
        state_machine: StateMachine,
        *,
        wake: Callable[[RaftGroup], None],
        incarnation: int,
        applied_index: int,
        merger: CommandMerger[Any] | None = None,
        on_role_change: Callable[[], None] | None = None,
        mutation: Mutation = Mutation.NONE,
        quiesce_after_ticks: int = 0,
    ) -> None:
        """`incarnation` must differ across restarts of the process (tags of replayed
        entries never match a new proposal); `applied_index` is where the state
        machine's durable state stands; `on_role_change` runs when the group's role
        or known leader changes; `mutation` is test-only (mutations.py);
        `quiesce_after_ticks`: a leader idle (`RawNode.can_quiesce` at each tick, and
        no entry appended) for this many ticks quiesces its group (0: never;
        rangekv/raft/quiesce.py)."""
        self.group_id = group_id
        self.raw_node = raw_node
        self.state_machine = state_machine
        self._wake = wake
        self._incarnation = incarnation
        self._seq = 0
        self._on_role_change = on_role_change
        self.mutation = mutation
        # Queued inputs, drained by the scheduler in `drain_inputs`.
        self._inbox: list[Message] = []
        self._ticks = 0
        self._tick_now = 0.0
        self.proposals: ProposalQueue[Any] = ProposalQueue(merger)
        self._to_propose_conf: list[tuple[ConfChange, asyncio.Future[Any]]] = []
        self._reports: list[tuple[str, int, bool]] = []
        self._transfer_to = 0
        # Quiescence: idle ticks so far, and wake-ups queued for the section.
        self._quiesce_after = quiesce_after_ticks
        self._idle_ticks = 0
        #: The log's last index at the previous tick: a group that appended since is
        #: busy, even if each of its entries was applied before the next tick came.
        self._last_index_at_tick = 0
        self._wake_leader = False
        self._wake_follower = False
        #: Ticks during which this group keeps forcing an election while no leader is known.
        self._forced_campaign_ticks = 0
        #: The next batch of proposals is proposed with `publish` (see `propose`).
        self._publish_next = False
        # Read index: at most one request in the core per scheduler iteration.
        self._read_waiting: asyncio.Future[int] | None = None
        self._read_ctx = 0
        self._reads_in_core: dict[bytes, asyncio.Future[int]] = {}
        self._reads_to_serve: list[tuple[int, asyncio.Future[int]]] = []
        # Proposals in the log, by tag, resolved when applied here.
        self._pending: dict[bytes, Waiter] = {}
        #: How far the state machine applied (may lead the core's after a snapshot).
        self.applied_index = applied_index
        #: Index of the last conf change applied (log truncation must not cut
        #: below it: a snapshot records the current configuration).
        self.last_conf_index = 0
        self.removed = False

    # --- the core, read-only ----------------------------------------------------------

    @property
    def replica_id(self) -> int:
        return self.raw_node.id

    @property
    def is_leader(self) -> bool:
        return self.raw_node.is_leader()

    def leader(self) -> int:
        """The replica id of the leader this replica believes in (0: none known)."""
        return self.raw_node.leader()

    def term(self) -> int:
        return self.raw_node.term()

    def commit_index(self) -> int:
        return self.raw_node.commit_index()

    def log_first_index(self) -> int:
        return self.raw_node.first_index()

    def status(self) -> Status:
        return self.raw_node.status()

    def conf_state(self) -> ConfState:
        return self.raw_node.conf_state()

    def lease_status(self, now: float) -> LeaseStatus:
        return self.raw_node.lease_status(now)

    @property
    def quiesced(self) -> bool:
        return self.raw_node.quiesced

    # --- inputs (any coroutine) -------------------------------------------------------

    def wake(self) -> None:
        self._wake(self)

    def deliver(self, msg: Message) -> None:
        self._inbox.append(msg)
        self._wake(self)

    @property
    def pending_ticks(self) -> int:
        """Ticks queued since the last drain."""
        return self._ticks

    def tick(self, now: float) -> None:
        self._ticks += 1
        self._tick_now = now
        self._wake(self)

    def report_unreachable(self, replica_id: int) -> None:
        self._reports.append(("unreachable", replica_id, False))
        self._wake(self)

    def report_snapshot(self, replica_id: int, failed: bool) -> None:
        self._reports.append(("snapshot", replica_id, failed))
        self._wake(self)

    def transfer_leadership(self, replica_id: int) -> None:
        self._transfer_to = replica_id
        self._wake(self)

    def wake_leader(self) -> None:
        """Wake a quiesced leader (e.g. a scan fence is about to rest on its lease)."""
        self._wake_leader = True
        self._wake(self)

    def wake_follower(self) -> None:
        """Wake a quiesced follower: ONLY when this node declared its leader's node
        unreachable and began a new liveness session toward it (quiesce.py)."""
        self._wake_follower = True
        self._wake(self)

    def propose(self, command: bytes, publish: bool = False) -> asyncio.Future[Any]:
        """Queue a command; the future resolves with the state machine's result on
        this replica, or fails with NotLeaderNow / Overloaded / ProposalAbandoned.
        `publish`: the followers hear at once when it commits, so that they apply
        it without waiting for the next append or heartbeat (raft lazy commit)."""
        fut = self.proposals.add_command(command)
        self._publish_next = self._publish_next or publish
        self._wake(self)
        return fut

    def propose_part(self, items: Sequence[Any]) -> asyncio.Future[list[Any]]:
        """Queue items to be merged with the other parts of this scheduler iteration
        into one command (proposals.py); the future gets this caller's slice."""
        fut = self.proposals.add_part(items)
        self._wake(self)
        return fut

    def propose_conf_change(self, cc: ConfChange) -> asyncio.Future[Any]:
        """Resolves once the core took the change into its log (not once applied)."""
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._to_propose_conf.append((cc, fut))
        self._wake(self)
        return fut

    def read_index(self) -> asyncio.Future[int]:
        """A future for a linearizable read point: resolves with an index once a
        quorum confirmed leadership AND this replica applied up to it. Concurrent
        callers within one scheduler iteration share one read-index request."""
        if self._read_waiting is None or self._read_waiting.done():
            self._read_waiting = asyncio.get_running_loop().create_future()
            self._wake(self)
        return self._read_waiting

    def force_campaign(self, ticks: int) -> None:
        """Win this group's first election at once: force an election now, and again
        every other tick while no leader is known, up to `ticks` - 2 ticks from now (a
        vote can reach a peer that does not host the group yet, which drops it). Only
        for a group that never had a leader (no lease can be broken): the caller's call.

        Why not up to `ticks`: with `ticks` the election timeout, a peer that created
        its replica no earlier than this one may win an election of its own by timeout
        after `ticks` - 1 of its ticks, i.e. (its ticks not in phase with ours) after
        `ticks` - 1 intervals of real time, and then hold a lease a forced vote would
        ignore. Our tick j comes at most j intervals after now, so the last forced
        election must come at j <= `ticks` - 2."""
        self._forced_campaign_ticks = ticks
        self.raw_node.campaign(force=True)
        self._wake(self)

    async def await_applied(
        self,
        fut: asyncio.Future[Any],
        timeout: float,
        what: str,
        not_leader: Callable[[], BaseException],
    ) -> Any:
        """The result of a proposal once this replica applied it, with the one
        mapping of its failures: refused before the log (`not_leader()`: nothing
        was applied) vs. lost or slow (Unavailable with outcome UNKNOWN)."""
        try:
            return await asyncio.wait_for(asyncio.shield(fut), timeout)
        except TimeoutError:
            raise E.Unavailable(
                f"{what} not applied within {timeout}s; it may or may not be applied",
                outcome=E.WriteOutcome.UNKNOWN,
            ) from None
        except NotLeaderNow:
            raise not_leader() from None
        except Overloaded as exc:
            raise E.ResourceExhausted(f"{what}: {exc}", retry_after=0.05) from None
        except ProposalAbandoned as exc:
            raise E.Unavailable(
                f"{what}: {exc}; it may or may not have been applied",
                outcome=E.WriteOutcome.UNKNOWN,
            ) from None

    async def await_read_point(
        self, now: float, timeout: float, count: Callable[[str], None] | None = None
    ) -> None:
        """Return once local applied state includes every acknowledged write.

        A valid lease costs nothing; a leader without one pays ONE read-index
        round trip (shared with concurrent callers); a non-leader raises
        NotLeaderNow. Raises TimeoutError when the read-index cannot complete
        in `timeout` (no quorum). `count` receives hit | readindex | not_leader.
        """
        lease = self.lease_status(now)
        if self.mutation is Mutation.LEASE_WITHOUT_CHECK and lease.state != LeaseState.NOT_LEADER:
            # TEST MUTATION: a (possibly deposed) leader serves without a lease.
            return
        if lease.state == LeaseState.VALID:
            if count is not None:
                count("hit")
            return
        if lease.state == LeaseState.NOT_LEADER:
            if count is not None:
                count("not_leader")
            raise NotLeaderNow("not the leader")
        if count is not None:
            count("readindex")
        await asyncio.wait_for(asyncio.shield(self.read_index()), timeout)

    # --- scheduler side (synchronous, inside the scheduler's section) -----------------

    def drain_inputs(self) -> None:
        """Feed every queued input to the core. Only the scheduler calls this."""
        node = self.raw_node
        if self._forced_campaign_ticks and self._ticks:
            self._maybe_force_campaign()
        ticked = self._ticks
        if self._ticks:
            ticks, self._ticks = self._ticks, 0
            for _ in range(ticks):
                node.tick(self._tick_now)
        if self._inbox:
            inbox, self._inbox = self._inbox, []
            for msg in inbox:
                node.step(msg)
        if self._reports:
            self._drain_reports(node)
        if self._transfer_to:
            target, self._transfer_to = self._transfer_to, 0
            node.transfer_leadership(target)
        self._propose_queued(node)
        if self._to_propose_conf:
            self._propose_conf_changes(node)
        self._request_read_index(node)
        self._quiescence(node, ticked)

    def _quiescence(self, node: RawNode, ticked: int) -> None:
        """Queued wake-ups; then, on a tick, quiesce a leader idle for long enough."""
        if self._wake_leader or self._wake_follower:
            leader = node.is_leader()
            if node.quiesced and (self._wake_leader if leader else self._wake_follower):
                node.unquiesce()
            self._wake_leader = self._wake_follower = False
        if not ticked:
            return
        if (
            self.mutation is Mutation.QUIESCED_FOLLOWER_CAMPAIGNS
            and node.quiesced
            and not node.is_leader()
        ):
            node.unquiesce()  # TEST MUTATION: a follower woken without a lapse
            return
        if not self._quiesce_after or not node.is_leader() or node.quiesced:
            self._idle_ticks = 0
            return
        # (Read on leaders only; a new leader's first tick sees its election's entry.)
        last = node.last_index()
        appended, self._last_index_at_tick = last != self._last_index_at_tick, last
        if appended or not node.can_quiesce():
            # Idle means nothing proposed for `quiesce_after` whole ticks, not nothing in
            # flight at that many tick instants: a range written about once a tick would
            # otherwise quiesce and wake again and again, a heartbeat round each time.
            self._idle_ticks = 0
            return
        self._idle_ticks += ticked
        if self._idle_ticks >= self._quiesce_after and not self._forced_campaign_ticks:
            node.quiesce()
            self._idle_ticks = 0

    def _maybe_force_campaign(self) -> None:
        self._forced_campaign_ticks = max(0, self._forced_campaign_ticks - self._ticks)
        node = self.raw_node
        if node.leader() or node.is_leader():
            self._forced_campaign_ticks = 0
        elif self._forced_campaign_ticks >= 2 and self._forced_campaign_ticks % 2 == 0:
            node.campaign(force=True)  # (never in the last two ticks: force_campaign)

    def _drain_reports(self, node: RawNode) -> None:
        reports, self._reports = self._reports, []
        for kind, replica_id, failed in reports:
            if kind == "unreachable":
                node.report_unreachable(replica_id)
            else:
                node.report_snapshot(replica_id, failed)

    def _propose_queued(self, node: RawNode) -> None:
        queued = self.proposals.take()
        if not queued:
            return
        datas = []
        for command, _waiter in queued:
            self._seq += 1
            datas.append(_TAG.pack(self._incarnation, self._seq) + command)
        publish, self._publish_next = self._publish_next, False
        try:
            node.propose_batch(datas, publish=publish)
        except UncommittedSizeExceeded as exc:
            for _command, waiter in queued:
                settle(waiter, Overloaded(str(exc)))
            return
        except ProposalDropped as exc:
            for _command, waiter in queued:
                settle(waiter, NotLeaderNow(str(exc)))
            return
        for data, (_command, waiter) in zip(datas, queued, strict=True):
            self._pending[data[:TAG_SIZE]] = waiter

    def _propose_conf_changes(self, node: RawNode) -> None:
        confs, self._to_propose_conf = self._to_propose_conf, []
        for cc, fut in confs:
            try:
                node.propose_conf_change(cc)
            except ProposalDropped as exc:
                settle(fut, NotLeaderNow(str(exc)))
            else:
                settle(fut, None)

    def _request_read_index(self, node: RawNode) -> None:
        waiting = self._read_waiting
        if (
            waiting is not None
            and not waiting.done()
            and waiting not in self._reads_in_core.values()
        ):
            self._read_ctx += 1
            ctx = _TAG.pack(self._incarnation, self._read_ctx)
            self._reads_in_core[ctx] = waiting
            self._read_waiting = None
            node.read_index(ctx)

    def take_ready(self) -> Ready | None:
        """The core's next Ready, if it has one (scheduler only)."""
        node = self.raw_node
        return node.ready() if node.has_ready() else None

    def apply_entries(self, rd: Ready, batch: StateBatch) -> Resolved:
        """Apply rd's committed entries into the shared state batch.

        Returns (waiter, result) pairs to settle once the batch is durable.
        Invariant: an entry at or below `applied_index` (already applied, e.g.
        replayed after a crash or covered by an ingested snapshot) has no state
        effect; a conf change still reaches the core, whose configuration is
        derived from the log.
        """
        done: Resolved = []
        for entry in rd.committed_entries:
            if entry.type == EntryType.CONF_CHANGE:
                cc = ConfChange.decode(entry.data)
                self.raw_node.apply_conf_change(cc)
                self.last_conf_index = entry.index
                if entry.index > self.applied_index:
                    self.state_machine.apply_conf_change(entry.index, cc, batch)
            elif entry.index > self.applied_index and len(entry.data) >= TAG_SIZE:
                self._apply_command(entry, batch, done)
            if entry.index > self.applied_index:
                self.applied_index = entry.index
        if rd.committed_entries:
            self.state_machine.record_applied(
                self.applied_index, rd.committed_entries[-1].term, batch
            )
        return done

    def _apply_command(self, entry: Entry, batch: StateBatch, done: Resolved) -> None:
        result = self.state_machine.apply_command(entry.index, entry.data[TAG_SIZE:], batch)
        waiter = self._pending.pop(entry.data[:TAG_SIZE], None)
        if waiter is not None:
            done.append((waiter, result))

    def apply_unreplicated(self, rd: Ready, batch: StateBatch) -> Resolved:
        """TEST MUTATION ack_before_quorum only: apply this leader's newly appended
        entries (not yet on a quorum) as if committed, so their proposals are
        acknowledged at once. Stops at the first conf change. Entries applied
        here are skipped when they really commit (index <= applied_index)."""
        done: Resolved = []
        last: Entry | None = None
        for entry in rd.entries:
            if entry.type == EntryType.CONF_CHANGE:
                break
            if entry.index <= self.applied_index:
                continue
            if len(entry.data) >= TAG_SIZE:
                self._apply_command(entry, batch, done)
            self.applied_index = entry.index
            last = entry
        if last is not None:
            self.state_machine.record_applied(self.applied_index, last.term, batch)
        return done

    def advance(self, rd: Ready) -> bool:
        """The Ready was persisted, sent and applied: advance the core, then settle
        leadership changes and read states. True when the core has more to do."""
        self.raw_node.advance(rd)
        if rd.soft_state is not None and rd.soft_state.raft_state != StateType.LEADER:
            self._abandon_all("leadership lost")
        for rs in rd.read_states:
            fut = self._reads_in_core.pop(rs.request_ctx, None)
            if fut is not None:
                self._reads_to_serve.append((rs.index, fut))
        if self._reads_to_serve:
            still = []
            for index, fut in self._reads_to_serve:
                if index <= self.applied_index:
                    settle(fut, index)
                else:
                    still.append((index, fut))
            self._reads_to_serve = still
        if rd.soft_state is not None and self._on_role_change is not None:
            self._on_role_change()
        return self.raw_node.has_ready()

    def _abandon_all(self, why: str) -> None:
        pending, self._pending = self._pending, {}
        for waiter in pending.values():
            settle(waiter, ProposalAbandoned(why))
        reads, self._reads_in_core = self._reads_in_core, {}
        for fut in reads.values():
            settle(fut, NotLeaderNow(why))
        for _index, fut in self._reads_to_serve:
            settle(fut, NotLeaderNow(why))
        self._reads_to_serve = []
        if self._read_waiting is not None:
            settle(self._read_waiting, NotLeaderNow(why))
            self._read_waiting = None

    def snapshot_refusal(self, message: Message, streamed_applied: int) -> str | None:
        """Why a streamed snapshot must not be installed here, or None. Only in the
        scheduler's section (it reads the core).

        Installing one whose state is not newer than what this replica applied
        would move the applied index back on disk while memory stays ahead, and
        the entries in between would never be applied again."""
        node = self.raw_node
        snap = message.snapshot
        if snap is None:
            return "the message carries no snapshot"
        if message.term < node.term():
            return f"sent in term {message.term}, before the current term {node.term()}"
        if snap.metadata.index <= node.commit_index():
            return f"raft already holds the log up to {node.commit_index()}"
        if streamed_applied <= self.applied_index:
            return f"its state (applied {streamed_applied}) is not newer than {self.applied_index}"
        return None

    def step_snapshot(self, message: Message) -> None:
        """Hand a SNAP to the core (scheduler's section only; host.install_snapshot)."""
        self.raw_node.step(message)
        self._wake(self)

    def close(self, why: str = "replica closed") -> None:
        self.removed = True
        self._abandon_all(why)
        self.proposals.fail_all(NotLeaderNow(why))
