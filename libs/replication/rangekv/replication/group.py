"""One raft group hosted by a process: the seam between asyncio callers and the pure core.

A `RaftGroup` owns a `rangekv.raft.RawNode` and is the only object that touches
it. Callers (gRPC handlers, the transport, the ticker) never call the core
directly: they queue inputs here (messages, ticks, proposals, read-index
requests, transport reports) and wake the scheduler. The scheduler then, in one
synchronous section per iteration, drains every queued input into the core,
takes a `Ready`, persists it with every other group's in one synced write,
sends, applies, and advances. Keeping every core call inside that section is
what makes the process a faithful driver of a deterministic state machine.

Proposals are resolved when the proposing node applies them (a write is
acknowledged only after commit by a quorum AND apply by the leaseholder).
Each proposal's entry carries a tag (process incarnation + counter) so that
after a restart no replayed entry can resolve a new caller's future.

Subclasses implement `apply_command` (and may override the hooks) to turn
committed commands into state-engine writes.
"""

from __future__ import annotations

import asyncio
import random
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from rangekv.common import errors as E
from rangekv.raft import (
    ConfChange,
    Entry,
    EntryType,
    LeaseState,
    LeaseStatus,
    Message,
    ProposalDropped,
    RawNode,
    Ready,
    StateType,
    UncommittedSizeExceeded,
)
from rangekv.replication.mutations import Mutation

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


@dataclass(frozen=True, slots=True)
class RaftTiming:
    """Ticks, elections and the lease derived from them.

    Lease derivation (why a new leader can never serve while an old lease is valid):
    the lease of a round sent at leader time `s` lasts until `s + lease_duration`
    on the leader's clock, i.e. at most `lease_duration * (1 + drift)` of real
    time. Every voter that acknowledged that round heard from the leader after
    `s` and (CheckQuorum + leader stickiness; a restarted node waits one election
    timeout) grants no vote for `election_ticks` of its own ticks. It may have heard
    the leader just before one of its ticks, so that is at least
    `(election_ticks - 1) * tick_interval * (1 - drift)` of real time; a late tick
    only lengthens the wait. So the lease is safe iff
    `lease_duration * (1 + drift) < (election_ticks - 1) * tick_interval * (1 - drift)`;
    we also subtract `lease_margin` for the time between stamping a round and the
    heartbeat leaving the process.
    """

    tick_interval: float = 0.1
    heartbeat_ticks: int = 1
    election_ticks: int = 10
    max_clock_drift: float = 0.05
    lease_margin: float = 0.05

    def __post_init__(self) -> None:
        if self.tick_interval <= 0:
            raise ValueError("tick_interval must be > 0")
        if not 0 < self.heartbeat_ticks < self.election_ticks:
            raise ValueError("need 0 < heartbeat_ticks < election_ticks")
        if not 0 <= self.max_clock_drift < 0.5:
            raise ValueError("max_clock_drift must be in [0, 0.5)")
        if self.lease_duration <= self.heartbeat_ticks * self.tick_interval:
            raise ValueError(
                "the derived lease is not longer than a heartbeat interval; "
                "raise election_ticks or lower max_clock_drift"
            )

    @property
    def lease_duration(self) -> float:
        safe_real = (self.election_ticks - 1) * self.tick_interval * (1 - self.max_clock_drift)
        return safe_real / (1 + self.max_clock_drift) - self.lease_margin


class RaftGroup:
    """A raft group's queued inputs, its pending proposals and its read waiters."""

    def __init__(
        self,
        group_id: int,
        raw_node: RawNode,
        *,
        wake: Callable[[RaftGroup], None],
        incarnation: int | None = None,
    ) -> None:
        self.group_id = group_id
        self.raw_node = raw_node
        self._wake = wake
        self._incarnation = incarnation if incarnation is not None else random.getrandbits(63) | 1
        self._seq = 0
        # Queued inputs, drained by the scheduler in `drain_inputs`.
        self._inbox: list[Message] = []
        self._ticks = 0
        self._tick_now = 0.0
        self._to_propose: list[tuple[bytes, asyncio.Future[Any]]] = []
        self._to_propose_conf: list[tuple[ConfChange, asyncio.Future[Any]]] = []
        self._reports: list[tuple[str, int, bool]] = []
        self._transfer_to = 0
        # Read index: at most one request in the core per scheduler iteration.
        self._read_waiting: asyncio.Future[int] | None = None
        self._read_ctx = 0
        self._reads_in_core: dict[bytes, asyncio.Future[int]] = {}
        self._reads_to_serve: list[tuple[int, asyncio.Future[int]]] = []
        # Proposals in the log, by tag, resolved when applied here.
        self._pending: dict[bytes, asyncio.Future[Any]] = {}
        self.applied_index = 0
        #: Index of the last conf change applied (log truncation must not cut
        #: below it, see the raftnode store).
        self.last_conf_index = 0
        self.removed = False
        #: Test-only mutation (see mutations.py); the scheduler sets it in add_group.
        self.mutation = Mutation.NONE

    # --- inputs (any coroutine) -----------------------------------------------------

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

    def propose(self, command: bytes) -> asyncio.Future[Any]:
        """Queue a command; the future resolves with `apply_command`'s result on
        this replica, or fails with NotLeaderNow / ProposalAbandoned."""
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._to_propose.append((command, fut))
        self._wake(self)
        return fut

    def propose_conf_change(self, cc: ConfChange) -> asyncio.Future[Any]:
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

    def lease_status(self, now: float) -> LeaseStatus:
        return self.raw_node.lease_status(now)

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

    @property
    def is_leader(self) -> bool:
        return self.raw_node.is_leader()

    # --- scheduler side (synchronous, inside the scheduler's section) -----------------

    def drain_inputs(self) -> None:
        """Feed every queued input to the core. Only the scheduler calls this."""
        node = self.raw_node
        self.before_drain()
        if self._ticks:
            ticks, self._ticks = self._ticks, 0
            for _ in range(ticks):
                node.tick(self._tick_now)
        if self._inbox:
            inbox, self._inbox = self._inbox, []
            for msg in inbox:
                node.step(msg)
        if self._reports:
            reports, self._reports = self._reports, []
            for kind, replica_id, failed in reports:
                if kind == "unreachable":
                    node.report_unreachable(replica_id)
                else:
                    node.report_snapshot(replica_id, failed)
        if self._transfer_to:
            target, self._transfer_to = self._transfer_to, 0
            node.transfer_leadership(target)
        if self._to_propose:
            self._propose_queued(node)
        if self._to_propose_conf:
            confs, self._to_propose_conf = self._to_propose_conf, []
            for cc, fut in confs:
                try:
                    node.propose_conf_change(cc)
                except ProposalDropped as exc:
                    _fail(fut, NotLeaderNow(str(exc)))
                else:
                    _resolve(fut, None)
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

    def _propose_queued(self, node: RawNode) -> None:
        queued, self._to_propose = self._to_propose, []
        datas = []
        for command, _fut in queued:
            self._seq += 1
            datas.append(_TAG.pack(self._incarnation, self._seq) + command)
        try:
            node.propose_batch(datas)
        except UncommittedSizeExceeded as exc:
            for _command, fut in queued:
                _fail(fut, Overloaded(str(exc)))
            return
        except ProposalDropped as exc:
            for _command, fut in queued:
                _fail(fut, NotLeaderNow(str(exc)))
            return
        for data, (_command, fut) in zip(datas, queued, strict=True):
            self._pending[data[:TAG_SIZE]] = fut

    def apply_entries(self, rd: Ready, batch: Any) -> list[tuple[asyncio.Future[Any], Any]]:
        """Apply rd's committed entries into the shared state batch.

        Returns (future, result) pairs to resolve once the batch is durable.
        Invariant: an entry at or below `applied_index` (already applied, e.g.
        replayed after a crash or covered by an ingested snapshot) has no state
        effect; a conf change still reaches the core, whose configuration is
        derived from the log.
        """
        done: list[tuple[asyncio.Future[Any], Any]] = []
        for entry in rd.committed_entries:
            if entry.type == EntryType.CONF_CHANGE:
                cc = ConfChange.decode(entry.data)
                self.raw_node.apply_conf_change(cc)
                self.last_conf_index = entry.index
                if entry.index > self.applied_index:
                    self.apply_conf_change(entry, cc, batch)
            elif entry.index > self.applied_index and len(entry.data) >= TAG_SIZE:
                result = self.apply_command(entry, entry.data[TAG_SIZE:], batch)
                fut = self._pending.pop(entry.data[:TAG_SIZE], None)
                if fut is not None:
                    done.append((fut, result))
            if entry.index > self.applied_index:
                self.applied_index = entry.index
        if rd.committed_entries:
            self.record_applied(self.applied_index, rd.committed_entries[-1].term, batch)
        return done

    def apply_unreplicated(self, rd: Ready, batch: Any) -> list[tuple[asyncio.Future[Any], Any]]:
        """TEST MUTATION ack_before_quorum only: apply this leader's newly appended
        entries (not yet on a quorum) as if committed, so their proposals are
        acknowledged at once. Stops at the first conf change. Entries applied
        here are skipped when they really commit (index <= applied_index)."""
        done: list[tuple[asyncio.Future[Any], Any]] = []
        last: Entry | None = None
        for entry in rd.entries:
            if entry.type == EntryType.CONF_CHANGE:
                break
            if entry.index <= self.applied_index:
                continue
            if len(entry.data) >= TAG_SIZE:
                result = self.apply_command(entry, entry.data[TAG_SIZE:], batch)
                fut = self._pending.pop(entry.data[:TAG_SIZE], None)
                if fut is not None:
                    done.append((fut, result))
            self.applied_index = entry.index
            last = entry
        if last is not None:
            self.record_applied(self.applied_index, last.term, batch)
        return done

    def after_advance(self, rd: Ready) -> None:
        """Leadership changes, read states: run after the core advanced."""
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
                    _resolve(fut, index)
                else:
                    still.append((index, fut))
            self._reads_to_serve = still
        if rd.soft_state is not None:
            self.on_soft_state(rd)

    def _abandon_all(self, why: str) -> None:
        pending, self._pending = self._pending, {}
        for fut in pending.values():
            _fail(fut, ProposalAbandoned(why))
        reads, self._reads_in_core = self._reads_in_core, {}
        for fut in reads.values():
            _fail(fut, NotLeaderNow(why))
        for _index, fut in self._reads_to_serve:
            _fail(fut, NotLeaderNow(why))
        self._reads_to_serve = []
        if self._read_waiting is not None:
            _fail(self._read_waiting, NotLeaderNow(why))
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

    def close(self, why: str = "replica closed") -> None:
        self.removed = True
        self._abandon_all(why)
        for _command, fut in self._to_propose:
            _fail(fut, NotLeaderNow(why))
        self._to_propose = []

    # --- hooks for subclasses -------------------------------------------------------

    def before_drain(self) -> None:
        """Called first in every drain: flush command batches into `propose`."""

    def apply_command(self, entry: Entry, command: bytes, batch: Any) -> Any:
        """Apply one committed command into `batch`; return the proposer's result."""
        raise NotImplementedError

    def apply_conf_change(self, entry: Entry, cc: ConfChange, batch: Any) -> None:
        """State effects of a committed conf change (e.g. a new descriptor)."""

    def record_applied(self, index: int, term: int, batch: Any) -> None:
        """Write the applied index (and term) into `batch`, atomically with the effects."""

    def on_soft_state(self, rd: Ready) -> None:
        """Role or leader changed."""


def _resolve(fut: asyncio.Future[Any], value: Any) -> None:
    if not fut.done():
        fut.set_result(value)


def _fail(fut: asyncio.Future[Any], exc: BaseException) -> None:
    if not fut.done():
        fut.set_exception(exc)
