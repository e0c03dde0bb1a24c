"""RawNode: the driver-facing wrapper that turns a `Raft` into Ready/advance batches.

The driver owns all effects. Its loop is::

    rd = node.ready()
    persist rd.snapshot, rd.entries, rd.hard_state   (fsync if rd.must_sync)
    send rd.messages
    apply rd.committed_entries (apply_conf_change for CONF_CHANGE entries)
    serve rd.read_states once applied >= their index
    node.advance(rd)

`ready()` hands out (and forgets) the queued messages and read states;
`advance(rd)` records that the entries in `rd` are durable and its committed
entries applied. Only after `advance` does the leader count its own log
toward a quorum, which keeps committed <= persisted on every node.
"""

from __future__ import annotations

from collections.abc import Sequence

from .errors import CampaignRefused, StepLocalMessage
from .quiesce import NO_LIVENESS, Liveness
from .raft import CAMPAIGN_TRANSFER, Raft
from .storage import Storage
from .types import (
    ConfChange,
    Config,
    ConfState,
    LeaseStatus,
    Message,
    MessageType,
    ProgressStatus,
    Ready,
    SoftState,
    StateType,
    Status,
)


class RawNode:
    """Thread-unsafe, I/O-free Raft node; see the module docstring for the driver loop."""

    __slots__ = ("_prev_hard", "_prev_soft", "raft")

    def __init__(self, config: Config, storage: Storage, liveness: Liveness = NO_LIVENESS) -> None:
        """`liveness`: the node-level liveness table a quiesced leader's lease rests
        on (quiesce.py); without it a quiesced leader's lease runs out."""
        self.raft = Raft(config, storage, liveness)
        self._prev_soft = self.raft.soft_state()
        self._prev_hard = self.raft.hard_state()

    # -- inputs ---------------------------------------------------------------

    def tick(self, now: float = 0.0) -> None:
        """Advance the logical clock one tick; `now` only stamps lease rounds."""
        self.raft.tick(now)

    def campaign(self, *, force: bool = False) -> None:
        """Start an election now (subject to PreVote like a timeout would be).

        Raises CampaignRefused when this node heard from a leader less than an
        election timeout ago, or restarted less than one ago: the leader's lease
        may rest on its acknowledgement (`Raft.campaign_refusal`).

        `force`: a forced election, like the one a leadership transfer starts:
        no pre-vote, no refusal, and voters grant it even in their stickiness or
        boot quiet period. Safe only when the driver knows that no node can hold
        a lease the election could break (e.g. a range that never had a leader)."""
        if not force:
            why = self.raft.campaign_refusal()
            if why is not None:
                raise CampaignRefused(why)
        context = CAMPAIGN_TRANSFER if force else b""
        self.raft.step(Message(MessageType.HUP, self.raft.id, self.raft.id, context=context))

    # -- quiescence (quiesce.py) -------------------------------------------------

    def quiesce(self) -> bool:
        """On an idle leader: stop ticking and heartbeating, and ask the followers to.
        False (nothing done) unless the group is idle and caught up."""
        return self.raft.quiesce()

    def unquiesce(self) -> None:
        """Wake. On a follower ONLY when its node declared the leader's node
        unreachable and began a new liveness session toward it (quiesce.py);
        proposals, reads and transfers wake a leader by themselves."""
        self.raft.unquiesce()

    def can_quiesce(self) -> bool:
        return self.raft.can_quiesce()

    @property
    def quiesced(self) -> bool:
        return self.raft.quiesced

    def propose(self, data: bytes) -> int:
        """Propose one entry; returns its index. Raises ProposalDropped."""
        return self.raft.propose((data,))

    def propose_batch(self, datas: Sequence[bytes], publish: bool = False) -> int:
        """Propose many entries at once (cheaper per entry); returns the last index.
        `publish`: followers hear at once when they commit, even under lazy commit."""
        return self.raft.propose(datas, publish=publish)

    def propose_conf_change(self, cc: ConfChange) -> int:
        """Propose a membership change; one at a time (raises ProposalDropped otherwise)."""
        return self.raft.propose_conf_change(cc)

    def apply_conf_change(self, cc: ConfChange) -> ConfState:
        return self.raft.apply_conf_change(cc)

    def step(self, msg: Message) -> None:
        """Deliver a message from a peer."""
        if msg.type.is_local():
            raise StepLocalMessage(f"{msg.type.name} is local-only and cannot be stepped")
        if msg.to != self.raft.id:
            return  # misrouted; a node only consumes its own mail
        self.raft.step(msg)

    def read_index(self, context: bytes) -> None:
        """Request a linearizable read point; answered by a ReadState in a later Ready.

        Dropped silently when no leader is known (the caller times out and retries).
        """
        rid = self.raft.id
        self.raft.step(Message(MessageType.READ_INDEX, rid, rid, context=context))

    def transfer_leadership(self, to: int) -> None:
        """Ask the leader (this node, or forwarded to it) to hand leadership to `to`."""
        self.raft.step(Message(MessageType.TRANSFER_LEADER, self.raft.id, to))

    def report_unreachable(self, node_id: int) -> None:
        """The transport failed to deliver to `node_id`: stop streaming to it."""
        self.raft.step(Message(MessageType.UNREACHABLE, self.raft.id, node_id))

    def report_snapshot(self, node_id: int, failed: bool) -> None:
        """Outcome of sending a SNAP to `node_id`; either way the leader resumes probing."""
        self.raft.step(Message(MessageType.SNAP_STATUS, self.raft.id, node_id, reject=failed))

    # -- outputs ----------------------------------------------------------------

    # The soft and hard state are compared field by field with what the last Ready
    # reported: has_ready runs for every group in every scheduler turn, and building
    # the two state values only to compare them dominated it.

    def _soft_changed(self) -> bool:
        r, prev = self.raft, self._prev_soft
        return r.lead != prev.lead or r.state is not prev.raft_state

    def _hard_changed(self) -> bool:
        r, prev = self.raft, self._prev_hard
        return r.term != prev.term or r.vote != prev.vote or r.log.committed != prev.commit

    def has_ready(self) -> bool:
        r = self.raft
        if r.msgs or r.read_states:
            return True
        log = r.log
        if log.unstable.entries or log.unstable.snapshot is not None:
            return True
        if log.has_next_committed_entries() or self._soft_changed():
            return True
        # A zero hard state (a node that never voted or committed) is never news.
        return self._hard_changed() and bool(r.term or r.vote or log.committed)

    def ready(self) -> Ready:
        """Collect pending work. Call `advance(rd)` after handling it, before the next `ready`."""
        r = self.raft
        log = r.log
        prev_hard = self._prev_hard
        soft_changed, hard_changed = self._soft_changed(), self._hard_changed()
        soft = r.soft_state() if soft_changed else self._prev_soft
        hard = r.hard_state() if hard_changed else prev_hard
        entries = tuple(log.unstable.entries)
        must_sync = bool(entries) or (hard.term != prev_hard.term or hard.vote != prev_hard.vote)
        rd = Ready(
            soft_state=soft if soft_changed else None,
            hard_state=hard if hard_changed else None,
            entries=entries,
            snapshot=log.unstable.snapshot,
            committed_entries=tuple(log.next_committed_entries()),
            messages=tuple(r.msgs),
            read_states=tuple(r.read_states),
            must_sync=must_sync,
        )
        r.msgs = []
        r.read_states = []
        self._prev_soft = soft
        self._prev_hard = hard
        return rd

    def advance(self, rd: Ready) -> None:
        """The driver persisted and applied everything in `rd`."""
        r = self.raft
        log = r.log
        if rd.snapshot is not None:
            log.stable_snap_to(rd.snapshot.index)
            # The state machine was restored from the snapshot: it is applied.
            if rd.snapshot.index > log.applied:
                log.applied = rd.snapshot.index
        if rd.entries:
            last = rd.entries[-1]
            log.stable_to(last.index, last.term)
            r.on_stable(log.stable_last_index())
        if rd.committed_entries:
            log.applied_to(rd.committed_entries[-1].index)
            r.reduce_uncommitted_size(rd.committed_entries)

    # -- inspection ---------------------------------------------------------------

    def status(self) -> Status:
        r = self.raft
        progress: dict[int, ProgressStatus] = {}
        if r.state is StateType.LEADER:
            for nid in r.tracker.ids():
                pr = r.tracker.progress[nid]
                progress[nid] = ProgressStatus(
                    match=pr.match,
                    next=pr.next,
                    state=pr.state,
                    recent_active=pr.recent_active,
                    paused=pr.is_paused(),
                    pending_snapshot=pr.pending_snapshot,
                    is_learner=pr.is_learner,
                    inflight=pr.inflights.count(),
                )
        return Status(
            id=r.id,
            term=r.term,
            vote=r.vote,
            lead=r.lead,
            state=r.state,
            commit=r.log.committed,
            applied=r.log.applied,
            lead_transferee=r.lead_transferee,
            progress=progress,
        )

    def lease_status(self, now: float) -> LeaseStatus:
        return self.raft.lease_status(now)

    def conf_state(self) -> ConfState:
        return self.raft.tracker.conf_state()

    @property
    def id(self) -> int:
        return self.raft.id

    def is_leader(self) -> bool:
        return self.raft.state is StateType.LEADER

    def leader(self) -> int:
        """The known leader's id, or NONE (0)."""
        return self.raft.lead

    def term(self) -> int:
        """The current term (cheaper than `status()` on hot paths)."""
        return self.raft.term

    def commit_index(self) -> int:
        """The highest log index known committed."""
        return self.raft.log.committed

    def first_index(self) -> int:
        """The first index the log still holds (older entries were compacted)."""
        return self.raft.log.first_index()

    def applied_index(self) -> int:
        """The highest log index the driver reported applied (through `advance`)."""
        return self.raft.log.applied

    def last_index(self) -> int:
        """The index of the last entry in the log, persisted or not."""
        return self.raft.log.last_index()

    def soft_state(self) -> SoftState:
        return self.raft.soft_state()
