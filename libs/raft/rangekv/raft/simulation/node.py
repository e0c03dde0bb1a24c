"""One simulated server: a RawNode, its "disk", its state machine and its clock.

The driver here is deliberately the textbook one from OVERVIEW.md, because
the simulator's job is to test the core, not a clever driver:

1. persist ``Ready.snapshot``, ``Ready.entries``, ``Ready.hard_state`` into
   the node's :class:`MemoryStorage` -- which *is* the disk: a crash keeps it
   and loses everything else (the RawNode with its unstable entries, the
   state machine, pending reads);
2. send ``Ready.messages``;
3. apply ``Ready.committed_entries`` (calling ``apply_conf_change`` for
   conf entries);
4. ``advance``.

A crash may also strike between steps 1 and 2 (``crash_after_persist``),
which is the window where a node has durably voted or appended but nobody
has heard about it yet.

Restart rebuilds the state machine from the storage snapshot and lets the
core re-deliver committed entries above it, which is how a real server
without a durable state machine recovers.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field, replace

from rangekv.raft import (
    ConfChange,
    Config,
    ConfState,
    Entry,
    EntryType,
    HardState,
    LeaseState,
    MemoryStorage,
    Message,
    RawNode,
    Ready,
    Snapshot,
    StateType,
)
from rangekv.raft.liveness_table import LivenessTable
from rangekv.raft.quiesce import NO_LIVENESS
from rangekv.raft.simulation.kv import ApplyResult, Command, KVStateMachine


class DriverError(AssertionError):
    """The core handed the driver something impossible (e.g. a gap in applied entries)."""


class SimClock:
    """A node's local clock: piecewise linear in global time, rate within drift bounds.

    Local time is what the node passes to ``tick(now)`` and
    ``lease_status(now)``; it never goes backwards, and its rate may change
    at any moment (NTP slews, VM pauses within the bound) but always stays in
    ``[1 - drift, 1 + drift]`` -- the assumption the lease derivation relies on.
    """

    __slots__ = ("_anchor_global", "_anchor_local", "epoch", "rate")

    def __init__(self, offset: float, rate: float) -> None:
        self._anchor_global = 0.0
        self._anchor_local = offset
        self.rate = rate
        self.epoch = 0
        """Bumped on every rate change so stale tick events can be recognised."""

    def now(self, global_time: float) -> float:
        """Local reading at ``global_time``."""
        return self._anchor_local + (global_time - self._anchor_global) * self.rate

    def global_at(self, local_time: float) -> float:
        """The global instant at which this clock will read ``local_time``."""
        return self._anchor_global + (local_time - self._anchor_local) / self.rate

    def set_rate(self, global_time: float, rate: float) -> None:
        """Change the rate from ``global_time`` on, keeping the reading continuous."""
        self._anchor_local = self.now(global_time)
        self._anchor_global = global_time
        self.rate = rate
        self.epoch += 1


@dataclass(slots=True)
class AppliedEntry:
    """One committed entry as this node applied it."""

    entry: Entry
    command: Command | None = None
    result: ApplyResult | None = None
    conf_change: ConfChange | None = None
    conf_state: ConfState | None = None
    state: Hashable = ()
    """State machine fingerprint right after this entry."""


@dataclass(slots=True)
class ReadyOutcome:
    """What handling one Ready did, for the cluster's invariant checks and clients."""

    ready: Ready
    prev_hard_state: HardState = field(default_factory=HardState)
    """What was on disk before this Ready was persisted."""
    applied: list[AppliedEntry] = field(default_factory=list)
    crashed: bool = False
    """The node crashed right after persisting (nothing sent, nothing applied)."""
    persisted: bool = True
    """False only when the (deliberately unsafe) driver crashed before persisting."""


class SimNode:
    """A server process that can crash and restart; its storage survives crashes."""

    def __init__(self, node_id: int, storage: MemoryStorage, clock: SimClock) -> None:
        self.id = node_id
        self.storage = storage
        self.clock = clock
        self.raft: RawNode | None = None
        self.kv = KVStateMachine()
        self.applied = 0
        self.conf_state = ConfState()
        self.incarnation = 0
        self.removed = False
        """Set once the node was removed from the cluster and shut down for good."""
        self.next_tick_local = 0.0
        self.ready_scheduled = False
        self.liveness: LivenessTable | None = None
        """Node-level liveness of this incarnation (quiescence on), else None."""
        self.ticks = 0

    # -- lifecycle ------------------------------------------------------------

    @property
    def alive(self) -> bool:
        return self.raft is not None

    def start(
        self,
        config: Config,
        global_now: float,
        tick_interval: float,
        liveness: LivenessTable | None = None,
    ) -> None:
        """Boot (or reboot) from exactly what is in storage."""
        snap = self.storage.snapshot()
        self.kv = KVStateMachine.deserialize(snap.data)
        self.applied = snap.metadata.index
        self.conf_state = snap.metadata.conf_state
        # The storage may hold a few entries below the snapshot (compaction keeps
        # some); tell the core the state machine already covers them.
        self.liveness = liveness
        self.raft = RawNode(
            replace(config, applied=self.applied), self.storage, liveness or NO_LIVENESS
        )
        self.incarnation += 1
        self.ready_scheduled = False
        local = self.clock.now(global_now)
        self.next_tick_local = local + tick_interval

    def crash(self) -> None:
        """Lose all volatile state; storage (the disk) stays."""
        self.raft = None
        self.kv = KVStateMachine()
        self.ready_scheduled = False
        self.liveness = None

    def node(self) -> RawNode:
        """The live RawNode (callers check :attr:`alive` first)."""
        assert self.raft is not None, f"node {self.id} is down"
        return self.raft

    # -- queries ----------------------------------------------------------------

    def local_now(self, global_now: float) -> float:
        return self.clock.now(global_now)

    def lease_valid(self, global_now: float) -> bool:
        """Whether the core says this node holds a VALID lease at this instant."""
        if self.raft is None:
            return False
        status = self.raft.lease_status(self.clock.now(global_now))
        return status.state is LeaseState.VALID

    def role(self) -> tuple[int, StateType, int]:
        """(term, state, lead) of the live node.

        Read from the RawNode's public ``raft`` attribute rather than
        ``status()``: this runs for every node after every event, and
        ``status()`` builds the leader's whole progress table each time.
        """
        assert self.raft is not None, f"node {self.id} is down"
        r = self.raft.raft
        return r.term, r.state, r.lead

    # -- the driver loop ------------------------------------------------------

    def handle_ready(  # noqa: C901 -- the simulator's driver loop, including its deliberately unsafe variants
        self,
        send: Callable[[Message], None],
        crash_after_persist: bool,
        unsafe_send_first: bool = False,
    ) -> ReadyOutcome | None:
        """Persist, send, apply and advance one Ready (None when there is none).

        ``unsafe_send_first`` is a deliberate driver bug for the simulator's
        self-tests: messages leave before the Ready is persisted, and the
        crash then strikes before persisting.
        """
        raft = self.node()
        if not raft.has_ready():
            return None
        rd = raft.ready()
        out = ReadyOutcome(rd, prev_hard_state=self.storage.hard_state)
        if unsafe_send_first:
            for msg in rd.messages:
                send(msg)
            if crash_after_persist:
                self.crash()
                out.crashed = True
                out.persisted = False
                return out
        # 1. Persist.  Order within the write: snapshot, entries, hard state.
        if rd.snapshot is not None and not rd.snapshot.is_empty():
            self.storage.apply_snapshot(rd.snapshot)
        if rd.entries:
            self.storage.append(rd.entries)
        if rd.hard_state is not None:
            self.storage.set_hard_state(rd.hard_state)
        if crash_after_persist:
            self.crash()
            out.crashed = True
            return out
        # 2. Send.
        if not unsafe_send_first:
            for msg in rd.messages:
                send(msg)
        # 3. Apply.
        if rd.snapshot is not None and not rd.snapshot.is_empty():
            self._restore(rd.snapshot)
        for entry in rd.committed_entries:
            out.applied.append(self._apply(raft, entry))
        # 4. Advance.
        raft.advance(rd)
        return out

    def _restore(self, snap: Snapshot) -> None:
        if snap.metadata.index <= self.applied:
            raise DriverError(
                f"node {self.id}: snapshot at {snap.metadata.index} not above applied {self.applied}"
            )
        self.kv = KVStateMachine.deserialize(snap.data)
        self.applied = snap.metadata.index
        self.conf_state = snap.metadata.conf_state

    def _apply(self, raft: RawNode, entry: Entry) -> AppliedEntry:
        if entry.index != self.applied + 1:
            raise DriverError(
                f"node {self.id}: committed entry {entry.index} does not follow applied "
                f"{self.applied}"
            )
        self.applied = entry.index
        applied = AppliedEntry(entry)
        if entry.type is EntryType.CONF_CHANGE:
            cc = ConfChange.decode(entry.data)
            applied.conf_change = cc
            self.conf_state = raft.apply_conf_change(cc)
            applied.conf_state = self.conf_state
        elif entry.data:
            cmd = Command.decode(entry.data)
            applied.command = cmd
            applied.result = self.kv.apply(cmd)
        applied.state = self.kv.fingerprint()
        return applied

    # -- compaction -----------------------------------------------------------

    def maybe_compact(self, rng: random.Random, every: int) -> str | None:
        """Snapshot at the applied index and drop most of the log before it.

        A few entries before the snapshot are sometimes kept so that both
        paths of a lagging follower's catch-up (entries vs. snapshot) get
        exercised.  Returns a trace line, or None when nothing was done.

        A snapshot is also taken as soon as the membership changed since the
        last one: the core (like etcd's) refuses a snapshot whose ConfState
        does not contain the receiving node, so a learner added after the
        latest snapshot could otherwise never catch up once the log below it
        is compacted and no new entries arrive.
        """
        snap = self.storage.snapshot().metadata
        stale_conf = snap.conf_state != self.conf_state and self.applied > snap.index
        if self.applied - snap.index < every and not stale_conf:
            return None
        self.storage.create_snapshot(self.applied, self.conf_state, self.kv.serialize())
        target = self.applied - rng.randint(0, 3)
        if target >= self.storage.first_index():
            self.storage.compact(target)
        return f"n{self.id} snapshot@{self.applied} compact->{self.storage.first_index() - 1}"
