"""The Raft state machine: one `step` entry point, one step function per role.

`Raft` holds a node's volatile state and reacts to ticks and messages by
mutating itself and queueing outgoing messages in `msgs`; `RawNode` turns
that into Ready/advance for the driver. Nothing here reads a clock or does
I/O: `now` arrives with `tick`, randomness from a `random.Random` seeded by
(config.rng_seed, id).

Invariants maintained in this file:
    applied <= committed <= last index (see log.py)
    a node votes at most once per term: `vote` only changes inside `reset` (new
    term) or from NONE in `_step_vote`
    the leader commits by counting replicas only for entries of its own term
    at most one conf change is proposed-but-unapplied (`pending_conf_index`)
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence

from .errors import InvariantViolation, ProposalDropped, StorageError, UncommittedSizeExceeded
from .lease import QuorumAckTracker, ReadOnly, ReadRequest
from .log import RaftLog
from .progress import Progress
from .quiesce import NO_LIVENESS, QUIESCE_CONTEXT, Liveness, QuiescedLeader, may_quiesce
from .storage import Storage
from .tracker import ProgressTracker, VoteResult
from .types import (
    NONE,
    ConfChange,
    ConfChangeType,
    Config,
    ConfState,
    Entry,
    EntryType,
    HardState,
    LeaseState,
    LeaseStatus,
    Message,
    MessageType,
    ProgressState,
    ReadState,
    Snapshot,
    SoftState,
    StateType,
)

MT = MessageType

#: VOTE context marking a leadership-transfer election: voters skip the
#: leader-stickiness and boot checks for it (the old leader asked for it).
CAMPAIGN_TRANSFER = b"rangekv/transfer"


class Raft:
    """One node's Raft state. Drive it through `RawNode`, not directly."""

    def __init__(self, config: Config, storage: Storage, liveness: Liveness = NO_LIVENESS) -> None:
        self.id = config.id
        self.config = config
        self.log = RaftLog(storage)
        self.rng = random.Random((config.rng_seed << 64) ^ config.id)
        self.election_timeout = config.election_tick
        self.heartbeat_timeout = config.heartbeat_tick
        self.check_quorum = config.check_quorum
        self.pre_vote = config.pre_vote
        self.lazy_commit = config.lazy_commit
        self.lazy_heartbeat = config.lazy_heartbeat
        self.max_msg_size = config.max_size_per_msg
        self.max_uncommitted_size = config.max_uncommitted_entries_size

        self.term = 0
        self.vote = NONE
        self.lead = NONE
        self.state = StateType.FOLLOWER
        self.msgs: list[Message] = []
        self.read_states: list[ReadState] = []
        self.tracker = ProgressTracker(config.max_inflight_msgs)
        self.election_elapsed = 0
        self.heartbeat_elapsed = 0
        # The round the last heartbeat broadcast of a tick opened (0: none yet in
        # this leadership); lazy heartbeats skip only followers that answered it.
        self.beat_round = 0
        self.randomized_election_timeout = self.election_timeout
        self.lead_transferee = NONE
        # TIMEOUT_NOW already left in this term: a forced election may follow
        # at any later time, so no lease may be trusted until the term ends.
        self.timeout_now_sent = False
        self.pending_conf_index = 0
        # Lazy commit: once commit reaches this index, tell the followers at once
        # (an entry proposed with `publish=True`); 0: nothing to publish.
        self.publish_index = 0
        self.uncommitted_size = 0
        self.term_start_index = 0  # index of the leader's first entry of its term
        self.pending_read_index: list[Message] = []
        self.read_only = ReadOnly()
        self.acks = QuorumAckTracker()
        self.now = 0.0
        self.boot_ticks_left = 0
        # Quiescence (quiesce.py): no ticking while set; `quiesced_leader` holds a
        # quiesced leader's liveness evidence.
        self.liveness = liveness
        self.quiesced = False
        self.quiesced_leader: QuiescedLeader | None = None
        # A quiesced follower: the round of the heartbeat that quiesced it.
        self.quiesce_round = 0
        # An unbound function, not a bound method: no Raft -> Raft reference cycle.
        self._step_role: Callable[[Raft, Message], None] = Raft._step_follower

        hs, cs = storage.initial_state()
        self.tracker.reset_membership(cs, self.log.last_index() + 1)
        if hs != HardState():
            self._load_hard_state(hs)
        if config.applied:
            self.log.applied_to(config.applied)
        # A node that has persisted a term may have acked some leader's lease
        # round before it (re)started and forgot when; it refuses non-forced
        # (pre-)votes for one election timeout, as if that leader were still
        # heard. A node at term 0 never acked anything (acks follow the term to
        # disk), so it has nothing to honour. Without CheckQuorum there is no
        # stickiness (and no lease) to extend across a restart.
        if hs.term > 0 and self.check_quorum:
            self.boot_ticks_left = self.election_timeout
        self.become_follower(self.term, NONE)

    # -- small accessors ------------------------------------------------------

    def soft_state(self) -> SoftState:
        return SoftState(self.lead, self.state)

    def hard_state(self) -> HardState:
        return HardState(self.term, self.vote, self.log.committed)

    def promotable(self) -> bool:
        """Only a voter with its own progress may campaign."""
        return self.tracker.is_voter(self.id) and self.log.unstable.snapshot is None

    def _load_hard_state(self, hs: HardState) -> None:
        if hs.commit < self.log.committed or hs.commit > self.log.last_index():
            raise InvariantViolation(
                f"hard state commit {hs.commit} outside "
                f"[{self.log.committed}, {self.log.last_index()}]"
            )
        self.log.committed = hs.commit
        self.term = hs.term
        self.vote = hs.vote

    def _send(self, m: Message) -> None:
        self.msgs.append(m)

    # -- role transitions -------------------------------------------------

    def _reset(self, term: int) -> None:
        if term != self.term:
            self.term = term
            self.vote = NONE
        self.lead = NONE
        self.election_elapsed = 0
        self.heartbeat_elapsed = 0
        self.beat_round = 0
        self.randomized_election_timeout = self.election_timeout + self.rng.randrange(
            self.election_timeout
        )
        self.lead_transferee = NONE
        self.timeout_now_sent = False
        self.tracker.reset_votes()
        nxt = self.log.last_index() + 1
        for nid, pr in self.tracker.progress.items():
            pr.reset(nxt)
            if nid == self.id:
                pr.match = self.log.stable_last_index()
        self.pending_conf_index = 0
        self.publish_index = 0
        self.uncommitted_size = 0
        self.pending_read_index = []
        self.read_only.reset()
        # Lease evidence belongs to one leadership: gone on any step-down or term change.
        self.acks.clear()
        self.quiesced = False
        self.quiesced_leader = None
        self.quiesce_round = 0  # rounds are the leader's: they restart with a new one

    def become_follower(self, term: int, lead: int) -> None:
        self._reset(term)
        self.lead = lead
        self.state = StateType.FOLLOWER
        self._step_role = Raft._step_follower

    def become_pre_candidate(self) -> None:
        if self.state is StateType.LEADER:
            raise InvariantViolation("leader cannot become pre-candidate")
        # Term and vote stay: a pre-election changes nothing durable.
        self.tracker.reset_votes()
        self.lead = NONE
        self.state = StateType.PRE_CANDIDATE
        self._step_role = Raft._step_candidate

    def become_candidate(self) -> None:
        if self.state is StateType.LEADER:
            raise InvariantViolation("leader cannot become candidate")
        self._reset(self.term + 1)
        self.vote = self.id
        self.state = StateType.CANDIDATE
        self._step_role = Raft._step_candidate

    def become_leader(self) -> None:
        if self.state is StateType.FOLLOWER:
            raise InvariantViolation("follower cannot become leader directly")
        self._reset(self.term)
        self.lead = self.id
        self.state = StateType.LEADER
        self._step_role = Raft._step_leader
        for pr in self.tracker.progress.values():
            pr.recent_active = True  # give everyone one timeout before CheckQuorum judges
        own = self.tracker.progress.get(self.id)
        if own is not None:
            own.become_replicate()
        # Any conf change in the uncommitted tail may be pending; be conservative.
        self.pending_conf_index = self.log.last_index()
        self.term_start_index = self.log.last_index() + 1
        self.log.append([Entry(self.term, self.term_start_index)])
        self._open_round()

    # -- ticks -------------------------------------------------------------

    def tick(self, now: float) -> None:
        self.now = now
        if self.boot_ticks_left:
            self.boot_ticks_left -= 1
        if self.quiesced:
            return  # a quiesced group's timers stand still (quiesce.py)
        if self.state is StateType.LEADER:
            self._tick_heartbeat()
        else:
            self._tick_election()

    def _tick_election(self) -> None:
        self.election_elapsed += 1
        if self.promotable() and self.election_elapsed >= self.randomized_election_timeout:
            self.election_elapsed = 0
            self.step(Message(MT.HUP, self.id, self.id))

    def _tick_heartbeat(self) -> None:
        self.heartbeat_elapsed += 1
        self.election_elapsed += 1
        if self.election_elapsed >= self.election_timeout:
            self.election_elapsed = 0
            if self.check_quorum:
                self.step(Message(MT.CHECK_QUORUM, self.id, self.id))
            # A transfer that did not finish within an election timeout is abandoned.
            if self.state is StateType.LEADER and self.lead_transferee != NONE:
                self.lead_transferee = NONE
        if self.state is not StateType.LEADER:
            return
        # A transfer abandoned (or whose target was removed) after its TIMEOUT_NOW left.
        lost_transfer = self.timeout_now_sent and self.lead_transferee == NONE
        if lost_transfer and self._reelect_after_lost_transfer():
            return
        if self.heartbeat_elapsed >= self.heartbeat_timeout:
            self.heartbeat_elapsed = 0
            self.step(Message(MT.BEAT, self.id, self.id))

    # -- elections ----------------------------------------------------------

    def _reelect_after_lost_transfer(self) -> bool:
        """The transfer was abandoned after its TIMEOUT_NOW left: this leader's
        lease is void for the rest of its term (a delayed TIMEOUT_NOW can still
        start a forced election), and its followers, hearing it, would never end
        the term. So it ends the term itself: a forced election at term + 1.

        Safe: forcing skips the voters' stickiness, which protects leases. No lease
        of term <= ours can be valid but our own, which is void. A leader of
        term + 1 (the target, if its TIMEOUT_NOW arrived after all) already has a
        majority of that term's votes, and a voter votes once per term, so this
        election cannot win against it; a voter already past term + 1 ignores it.
        It is forced once: if it fails, we are a candidate like any other, and
        our own followers grant our later pre-votes despite their stickiness
        (`_step_awake`: we no longer lead, so no lease rests on their promise).
        True: we campaigned (a single voter may already lead the new term).
        """
        if self._has_unapplied_conf_change():
            return False  # membership may change under us: retried on the next tick
        self.become_follower(self.term, NONE)
        self._campaign(pre=False, transfer=True)
        return True

    def _has_unapplied_conf_change(self) -> bool:
        if self.log.committed <= self.log.applied:
            return False
        try:
            ents = self.log.slice(self.log.applied + 1, self.log.committed + 1)
        except StorageError:
            return True  # cannot tell: be safe and do not campaign
        return any(e.type is EntryType.CONF_CHANGE for e in ents)

    def campaign_refusal(self) -> str | None:
        """Why an election the driver starts now, unforced, could break a lease; None
        if it could not.

        A leader's lease rests on a quorum's acknowledgements of its rounds, and on
        each acknowledging voter's promise not to help elect anyone else for an
        election timeout after it heard from the leader (stickiness, `_step_awake`).
        A timeout-driven campaign keeps that promise by construction (it starts an
        election timeout after the leader was last heard), but a campaign the
        driver asks for at any moment would not: the candidate's vote for itself
        counts toward its quorum, and voters that never heard from the old leader
        (cut off, or just restarted past their quiet period) may grant theirs. So
        the same rule the voters follow applies to the candidate itself.
        """
        if self.state is StateType.LEADER:
            return None  # nothing happens (_hup)
        if self.boot_ticks_left > 0:
            return (
                f"node {self.id} restarted less than an election timeout ago and may have "
                "acknowledged a leader's lease round before it stopped"
            )
        if (
            self.check_quorum
            and self.lead != NONE
            and self.election_elapsed < self.election_timeout
        ):
            return (
                f"node {self.id} heard from leader {self.lead} less than an election "
                "timeout ago; its lease may rest on this node's acknowledgement"
            )
        return None

    def _hup(self, transfer: bool) -> None:
        if self.state is StateType.LEADER or not self.promotable():
            return
        # Our membership may be about to change under us; wait until it is applied.
        if self._has_unapplied_conf_change():
            return
        if self.pre_vote and not transfer:
            self._campaign(pre=True, transfer=False)
        else:
            self._campaign(pre=False, transfer=transfer)

    def _campaign(self, pre: bool, transfer: bool) -> None:
        if pre:
            self.become_pre_candidate()
            vote_type, term = MT.PRE_VOTE, self.term + 1
        else:
            self.become_candidate()
            vote_type, term = MT.VOTE, self.term
        self.tracker.record_vote(self.id, True)
        if self.tracker.tally_votes()[2] is VoteResult.WON:
            # Single-voter cluster: nobody else to ask.
            if pre:
                self._campaign(pre=False, transfer=transfer)
            else:
                self.become_leader()
                self._bcast_append()
            return
        li, lt = self.log.last_index(), self.log.last_term()
        ctx = CAMPAIGN_TRANSFER if transfer else b""
        for nid in self.tracker.voters:
            if nid != self.id:
                self._send(Message(vote_type, nid, self.id, term, lt, li, context=ctx))

    def _step_vote(self, m: Message) -> None:
        resp_type = MT.VOTE_RESP if m.type is MT.VOTE else MT.PRE_VOTE_RESP
        can_vote = (
            self.vote == m.sender
            or (self.vote == NONE and self.lead == NONE)
            # A pre-vote for a future term commits us to nothing.
            or (m.type is MT.PRE_VOTE and m.term > self.term)
        )
        if can_vote and self.log.is_up_to_date(m.index, m.log_term):
            # Pre-vote answers carry the asked-for term so the candidate can tell them apart.
            self._send(Message(resp_type, m.sender, self.id, m.term))
            if m.type is MT.VOTE:
                self.election_elapsed = 0
                self.vote = m.sender
        else:
            self._send(Message(resp_type, m.sender, self.id, self.term, reject=True))

    # -- the step function ------------------------------------------------

    def step(self, m: Message) -> None:
        """Handle one message: term checks first, then the role-specific step."""
        if self.quiesced and not self._quiesced_step(m):
            return
        self._step_awake(m)

    def _step_awake(self, m: Message) -> None:
        if m.term == 0:
            pass  # local message
        elif m.term > self.term:
            if m.type is MT.VOTE or m.type is MT.PRE_VOTE:
                forced = m.context == CAMPAIGN_TRANSFER
                # Leader stickiness (with CheckQuorum): while we heard from a
                # leader within an election timeout, nobody can have lost it,
                # and honouring a disruptive candidate would break its lease.
                # Our own leader asking for votes gave up leading (it steps down
                # before it campaigns): no lease rests on our promise any more.
                in_lease = (
                    self.check_quorum
                    and self.lead != NONE
                    and self.lead != m.sender
                    and self.election_elapsed < self.election_timeout
                )
                if not forced and (in_lease or self.boot_ticks_left > 0):
                    return
            if m.type is MT.PRE_VOTE or (m.type is MT.PRE_VOTE_RESP and not m.reject):
                # A pre-vote does not bump terms; a granted pre-vote answer
                # carries the future term we asked about.
                pass
            elif m.type in (MT.APP, MT.HEARTBEAT, MT.SNAP):
                self.become_follower(m.term, m.sender)
            else:
                self.become_follower(m.term, NONE)
        elif m.term < self.term:
            if (self.check_quorum or self.pre_vote) and m.type in (MT.APP, MT.HEARTBEAT):
                # A stale leader cut off by a partition: tell it our term so it
                # steps down (it cannot learn it from votes when PreVote is on).
                self._send(Message(MT.APP_RESP, m.sender, self.id, self.term))
            elif m.type is MT.PRE_VOTE:
                self._send(Message(MT.PRE_VOTE_RESP, m.sender, self.id, self.term, reject=True))
            return

        if m.type is MT.HUP:
            # A local HUP carrying CAMPAIGN_TRANSFER forces the election, as a
            # leadership transfer does (voters skip their stickiness and boot quiet
            # period for it). Only drivers that know no lease can be broken use it.
            self._hup(transfer=m.context == CAMPAIGN_TRANSFER)
        elif m.type is MT.VOTE or m.type is MT.PRE_VOTE:
            self._step_vote(m)
        else:
            self._step_role(self, m)

    # -- quiescence (the argument is in quiesce.py) ---------------------------

    def can_quiesce(self) -> bool:
        return may_quiesce(self)

    def quiesce(self) -> bool:
        """An idle leader stops ticking and asks its peers to; False if not idle."""
        if not may_quiesce(self):
            return False
        r = self._open_round()
        self.quiesced_leader = QuiescedLeader(r)
        self.quiesced = True
        committed = self.log.committed
        for nid in self.tracker.ids():
            if nid != self.id:
                self._send(
                    Message(
                        MT.HEARTBEAT,
                        nid,
                        self.id,
                        self.term,
                        commit=committed,
                        context=QUIESCE_CONTEXT,
                        round=r,
                    )
                )
        return True

    def unquiesce(self) -> None:
        """Wake: timers run again from zero; a leader keeps the lease its liveness
        evidence gave (still covered by the followers' promises) and heartbeats at once."""
        if not self.quiesced:
            return
        self.quiesced = False
        self.election_elapsed = 0
        self.heartbeat_elapsed = 0
        if self.state is not StateType.LEADER:
            return
        q = self.quiesced_leader
        self.quiesced_leader = None
        if q is not None:
            t = q.quorum_time(self.tracker.voters, self.id, self.liveness)
            if t is not None:
                self.acks.adopt(t)
        for pr in self.tracker.progress.values():
            pr.recent_active = True  # no messages while quiesced: one timeout before judging
        self._open_round()
        self._bcast_heartbeat()

    def _quiesced_step(self, m: Message) -> bool:
        """Wake if `m` wakes this quiesced node; False: drop `m` (a campaign)."""
        if self._wakes(m):
            self.unquiesce()
            return True
        return m.type is not MT.HUP  # a quiesced follower never campaigns (quiesce.py)

    def _wakes(self, m: Message) -> bool:
        """Whether `m` wakes this quiesced node.

        A leader wakes on everything but a heartbeat answer of its term (and on
        the answer of a follower that would not quiesce). A follower wakes only
        on its leader's APP, plain HEARTBEAT or SNAP in its term sent AFTER the
        quiescing heartbeat (a later round: a leader opens a round when it wakes,
        before it sends anything; an older message delivered late must not wake
        it), or TIMEOUT_NOW (a leader that sent one never quiesces in that term)
        -- never on its own: that is the promise its lease rests on. A message of
        a newer term resets it (`_reset`) like any follower.
        """
        if self.state is StateType.LEADER:
            if m.type is not MT.HEARTBEAT_RESP or m.term != self.term:
                return True
            q = self.quiesced_leader
            return q is not None and m.round == q.round and m.context != QUIESCE_CONTEXT
        if m.term != self.term or m.sender != self.lead:
            return False
        if m.type is MT.TIMEOUT_NOW:
            return True
        if m.type is MT.HEARTBEAT and m.context == QUIESCE_CONTEXT:
            return False
        return m.type in (MT.APP, MT.HEARTBEAT, MT.SNAP) and m.round > self.quiesce_round

    # -- leader -------------------------------------------------------------

    def _step_leader(self, m: Message) -> None:
        t = m.type
        if t is MT.BEAT:
            previous, self.beat_round = self.beat_round, self._open_round()
            lazy = self.lazy_heartbeat and previous > 0  # never at a leadership's first
            self._bcast_heartbeat(skip_answered=previous if lazy else None)
        elif t is MT.CHECK_QUORUM:
            if not self.tracker.quorum_active(self.id):
                self.become_follower(self.term, NONE)
            else:
                self.tracker.reset_recent_active(self.id)
        elif t is MT.READ_INDEX:
            self._leader_read_index(m)
        elif t is MT.TRANSFER_LEADER:
            self._leader_transfer(m.sender)
        else:
            pr = self.tracker.progress.get(m.sender)
            if pr is not None:  # else: a peer no longer in the configuration
                self._step_leader_from_peer(m, pr)

    def _step_leader_from_peer(self, m: Message, pr: Progress) -> None:
        """A leader hears what became of what it sent `m.sender`."""
        t = m.type
        if t is MT.APP_RESP:
            pr.recent_active = True
            self._record_ack(pr, m.round)
            if m.reject:
                self._leader_append_rejected(m, pr)
            else:
                self._leader_append_accepted(m, pr)
        elif t is MT.HEARTBEAT_RESP:
            self._leader_heartbeat_answered(m, pr)
        elif t is MT.SNAP_STATUS:
            if pr.state is not ProgressState.SNAPSHOT:
                return
            if m.reject:
                pr.pending_snapshot = 0
            pr.become_probe()
            # Wait for an APP_RESP/heartbeat before probing again.
            pr.probe_sent = True
        elif t is MT.UNREACHABLE and pr.state is ProgressState.REPLICATE:
            pr.become_probe()

    def _leader_heartbeat_answered(self, m: Message, pr: Progress) -> None:
        """A follower answered a heartbeat: it is alive and acked `m.round`; maybe it
        needs an APP (a probe, a full window, or entries overdue)."""
        pr.recent_active = True
        pr.probe_sent = False
        self._record_ack(pr, m.round)
        q = self.quiesced_leader
        if q is not None and m.round == q.round and m.context == QUIESCE_CONTEXT:
            stamp = self.liveness.stamp(m.sender)
            if stamp is not None:
                q.stamps[m.sender] = stamp
        was_full = pr.state is ProgressState.REPLICATE and pr.inflights.full()
        if was_full:
            pr.inflights.free_first_one()
        if pr.overdue_at_beat() and pr.state is ProgressState.REPLICATE:
            # Lost or stuck: resend from what the follower holds (a probe), not
            # from `next`, which would only be rejected first.
            pr.become_probe()
        # Replicating, an APP here is only for a full window; entries merely in
        # flight answer for themselves (an empty APP for them was most of the
        # APPs of many ranges with a write each per heartbeat interval).
        if pr.match < self.log.last_index() and (
            pr.state is not ProgressState.REPLICATE or was_full
        ):
            self._send_append(m.sender)

    def _leader_append_rejected(self, m: Message, pr: Progress) -> None:
        """The follower's log does not match at `m.index`: probe further back."""
        hint = m.reject_hint
        if m.log_term > 0:
            hint = self.log.find_conflict_by_term(hint, m.log_term)
        if pr.maybe_decr_to(m.index, hint):
            if pr.state is ProgressState.REPLICATE:
                pr.become_probe()
            self._send_append(m.sender)

    def _leader_append_accepted(self, m: Message, pr: Progress) -> None:
        """The follower holds our log up to `m.index`: advance, commit, send more."""
        was_paused = pr.is_paused()
        updated = pr.maybe_update(m.index)
        # A probe answered at exactly `match` also proves where the log ends.
        if not updated and not (pr.state is ProgressState.PROBE and pr.match == m.index):
            return
        if pr.state is ProgressState.PROBE:
            pr.become_replicate()
        elif pr.state is ProgressState.SNAPSHOT and pr.match + 1 >= self.log.first_index():
            pr.become_probe()
            pr.become_replicate()
        elif pr.state is ProgressState.REPLICATE:
            pr.inflights.free_le(m.index)
        if self._maybe_commit() and self._commit_to_publish():
            self._bcast_append()
        elif was_paused:
            self._send_append(m.sender)
        while self._send_append(m.sender, send_if_empty=False):
            pass  # fill the window
        if m.sender == self.lead_transferee and pr.match == self.log.last_index():
            self._send_timeout_now(m.sender)

    def _leader_transfer(self, target: int) -> None:
        if self.tracker.progress.get(target) is None or target in self.tracker.learners:
            return
        if self.lead_transferee != NONE:
            if self.lead_transferee == target:
                return
            self.lead_transferee = NONE
        if target == self.id:
            return
        self.election_elapsed = 0  # the transfer must finish within one election timeout
        self.lead_transferee = target
        # From here on another node may win a forced election: the lease is void.
        self.acks.clear()
        if self.tracker.progress[target].match == self.log.last_index():
            self._send_timeout_now(target)
        else:
            self._send_append(target)

    def _send_timeout_now(self, to: int) -> None:
        self.timeout_now_sent = True
        self._send(Message(MT.TIMEOUT_NOW, to, self.id, self.term))

    def _leader_read_index(self, m: Message) -> None:
        # Our commit index is only known to be current once an entry of our
        # term has committed (even alone: a restarted node's commit may lag).
        if not self._committed_entry_in_current_term():
            self.pending_read_index.append(m)
            return
        if self.tracker.is_single_voter(self.id):
            self._answer_read(ReadRequest(self.log.committed, m.context, m.sender, 0))
            return
        r = self._open_round()
        self.read_only.add(ReadRequest(self.log.committed, m.context, m.sender, r))
        self._bcast_heartbeat()

    def _answer_read(self, req: ReadRequest) -> None:
        if req.requester in (NONE, self.id):
            self.read_states.append(ReadState(req.index, req.context))
        else:
            self._send(
                Message(
                    MT.READ_INDEX_RESP,
                    req.requester,
                    self.id,
                    self.term,
                    index=req.index,
                    context=req.context,
                )
            )

    def _committed_entry_in_current_term(self) -> bool:
        return self.log.zero_term_on_error(self.log.committed) == self.term

    def _open_round(self) -> int:
        r = self.acks.open_round(self.now)
        own = self.tracker.progress.get(self.id)
        if own is not None:
            self._record_ack(own, r)  # the leader acks its own round at once
        return r

    def _record_ack(self, pr: Progress, r: int) -> None:
        """A voter (or the leader itself) echoed round r; maybe a quorum now has."""
        if r <= pr.acked_round:
            return
        pr.acked_round = r
        if self.acks.on_quorum_round(self.tracker.quorum_acked_round()):
            for req in self.read_only.release(self.acks.acked_round):
                self._answer_read(req)

    def _maybe_commit(self) -> bool:
        """Advance commit to what a quorum matched, if that entry is of our term.

        Counting replicas of an older term's entry is unsafe (Raft §5.4.2,
        figure 8): it could still be overwritten by a leader of a newer term.
        """
        mci = self.tracker.committed()
        if not self.log.maybe_commit(mci, self.term):
            return False
        if self.pending_read_index and self._committed_entry_in_current_term():
            waiting, self.pending_read_index = self.pending_read_index, []
            for m in waiting:
                self._leader_read_index(m)
        return True

    # -- sending ------------------------------------------------------------

    def _send_append(self, to: int, send_if_empty: bool = True) -> bool:
        pr = self.tracker.progress[to]
        if pr.is_paused():
            return False
        if not send_if_empty and pr.next == self.log.last_index() + 1:
            return False  # nothing to send (the usual end of a window fill): skip the reads
        prev = pr.next - 1
        try:
            prev_term = self.log.term(prev)
            ents = self.log.entries(pr.next, self.max_msg_size)
        except StorageError:
            return self._send_snapshot(to)
        if not ents and not send_if_empty:
            return False
        self._send(
            Message(
                MT.APP,
                to,
                self.id,
                self.term,
                prev_term,
                prev,
                tuple(ents),
                self.log.committed,
                round=self.acks.round,
            )
        )
        pr.sent_entries(len(ents), ents[-1].index if ents else prev)
        return True

    def _send_snapshot(self, to: int) -> bool:
        pr = self.tracker.progress[to]
        if not pr.recent_active:
            return False  # no point shipping a snapshot to a peer that is down
        try:
            snap = self.log.snapshot()
        except StorageError:
            return False  # temporarily unavailable: retried on a later round
        if snap.is_empty():
            raise InvariantViolation("need a snapshot but storage has none")
        pr.become_snapshot(snap.index)
        self._send(Message(MT.SNAP, to, self.id, self.term, snapshot=snap, round=self.acks.round))
        return True

    def _bcast_append(self) -> None:
        for nid in self.tracker.ids():
            if nid != self.id:
                self._send_append(nid)

    def _bcast_heartbeat(self, skip_answered: int | None = None) -> None:
        """Heartbeat every follower, but (Config.lazy_heartbeat, `skip_answered` given)
        not one that is replicating with room in its window, was sent an APP since the
        previous broadcast, AND has answered round `skip_answered` (the previous beat's)
        or a later one. Its lease round then travels on the next APP (sent after this
        round opened, so it never claims an earlier send time), or on the next
        heartbeat, one interval later, if no APP comes. The first beat of a leadership
        heartbeats everyone: until then the lease rests on the election's round, whose
        send time may be old (a new group's clock starts at its first tick).

        The answer condition keeps leadership off the append lane: APPs and their
        answers travel behind bulk traffic (a backed-up or stalled lane), heartbeats
        on a lane of their own. A follower whose answers stopped coming is heartbeaten
        again at the next beat, so a stall costs at most one skipped heartbeat."""
        committed, r = self.log.committed, self.acks.round
        for nid in self.tracker.ids():
            if nid == self.id:
                continue
            pr = self.tracker.progress[nid]
            appended, pr.appended_since_beat = pr.appended_since_beat, False
            if (
                skip_answered is not None
                and appended
                and pr.acked_round >= skip_answered
                and pr.state is ProgressState.REPLICATE
                and not pr.inflights.full()
            ):
                continue
            # The follower may not have entries past match; never make it commit them.
            commit = min(pr.match, committed)
            self._send(Message(MT.HEARTBEAT, nid, self.id, self.term, commit=commit, round=r))

    # -- candidate / follower ---------------------------------------------

    def _step_candidate(self, m: Message) -> None:
        t = m.type
        my_resp = MT.PRE_VOTE_RESP if self.state is StateType.PRE_CANDIDATE else MT.VOTE_RESP
        if t is MT.APP:
            self.become_follower(m.term, m.sender)
            self._handle_append(m)
        elif t is MT.HEARTBEAT:
            self.become_follower(m.term, m.sender)
            self._handle_heartbeat(m)
        elif t is MT.SNAP:
            self.become_follower(m.term, m.sender)
            self._handle_snapshot(m)
        elif t is my_resp:
            self.tracker.record_vote(m.sender, not m.reject)
            result = self.tracker.tally_votes()[2]
            if result is VoteResult.WON:
                if self.state is StateType.PRE_CANDIDATE:
                    self._campaign(pre=False, transfer=False)
                else:
                    self.become_leader()
                    self._bcast_append()
            elif result is VoteResult.LOST:
                self.become_follower(self.term, NONE)

    def _step_follower(self, m: Message) -> None:
        t = m.type
        if t is MT.APP:
            self.election_elapsed = 0
            self.lead = m.sender
            self._handle_append(m)
        elif t is MT.HEARTBEAT:
            self.election_elapsed = 0
            self.lead = m.sender
            self._handle_heartbeat(m)
        elif t is MT.SNAP:
            self.election_elapsed = 0
            self.lead = m.sender
            self._handle_snapshot(m)
        elif t is MT.TRANSFER_LEADER:
            if self.lead != NONE:
                self._send(Message(MT.TRANSFER_LEADER, self.lead, m.sender, self.term))
        elif t is MT.TIMEOUT_NOW:
            # Sent by our leader: start a forced election without pre-vote.
            self._hup(transfer=True)
        elif t is MT.READ_INDEX:
            if self.lead != NONE:
                self._send(
                    Message(MT.READ_INDEX, self.lead, m.sender, self.term, context=m.context)
                )
        elif t is MT.READ_INDEX_RESP:
            self.read_states.append(ReadState(m.index, m.context))

    def _handle_append(self, m: Message) -> None:
        r = m.round
        if m.index < self.log.committed:
            self._send(
                Message(
                    MT.APP_RESP, m.sender, self.id, self.term, index=self.log.committed, round=r
                )
            )
            return
        last_new = self.log.maybe_append(m.index, m.log_term, m.commit, m.entries)
        if last_new is not None:
            self._send(Message(MT.APP_RESP, m.sender, self.id, self.term, index=last_new, round=r))
            return
        # Fast backtracking: point the leader at our last entry whose term is
        # <= the term it assumed at m.index, skipping a whole term per round trip.
        hint = self.log.find_conflict_by_term(min(m.index, self.log.last_index()), m.log_term)
        self._send(
            Message(
                MT.APP_RESP,
                m.sender,
                self.id,
                self.term,
                self.log.zero_term_on_error(hint),
                m.index,
                reject=True,
                reject_hint=hint,
                round=r,
            )
        )

    def _handle_heartbeat(self, m: Message) -> None:
        self.log.commit_to(m.commit)
        ctx = b""
        if m.context == QUIESCE_CONTEXT and self._may_follow_into_quiescence(m.commit):
            self.quiesced = True
            self.quiesce_round = max(self.quiesce_round, m.round)
            ctx = QUIESCE_CONTEXT
        self._send(
            Message(MT.HEARTBEAT_RESP, m.sender, self.id, self.term, context=ctx, round=m.round)
        )

    def _may_follow_into_quiescence(self, commit: int) -> bool:
        """A follower quiesces only with exactly the leader's log, all of it committed."""
        log = self.log
        return (
            log.committed == commit
            and log.last_index() == commit
            and log.unstable.snapshot is None
            and self.lead != NONE
        )

    def _handle_snapshot(self, m: Message) -> None:
        snap = m.snapshot
        if snap is not None and self._restore(snap):
            index = self.log.last_index()
        else:
            index = self.log.committed
        self._send(Message(MT.APP_RESP, m.sender, self.id, self.term, index=index, round=m.round))

    def _restore(self, snap: Snapshot) -> bool:
        """Adopt a leader's snapshot; False if it brings nothing new."""
        if snap.index <= self.log.committed:
            return False
        cs = snap.metadata.conf_state
        if self.id not in cs.voters and self.id not in cs.learners:
            return False  # not for us: a confused sender or a stale snapshot
        if self.log.match_term(snap.index, snap.term):
            # We already have the entries; just learn that they are committed.
            self.log.commit_to(snap.index)
            return False
        self.log.restore(snap)
        self.tracker.reset_membership(cs, self.log.last_index() + 1)
        return True

    # -- proposals and membership ------------------------------------------

    def propose(
        self, datas: Sequence[bytes], etype: EntryType = EntryType.NORMAL, publish: bool = False
    ) -> int:
        """Append proposals to the leader's log; returns the last index used.

        `publish`: under lazy commit, the followers hear at once when these
        entries commit (as without it), for entries they should apply promptly.

        Proposals never cross the wire (followers refuse rather than forward),
        so they bypass `step` and are built directly as final entries: one
        Entry object per proposal, no re-stamping.
        """
        if self.state is not StateType.LEADER:
            raise ProposalDropped(f"node {self.id} is not the leader (leader: {self.lead})")
        if self.quiesced:
            self.unquiesce()
        if self.lead_transferee != NONE:
            raise ProposalDropped(f"leadership transfer to {self.lead_transferee} in progress")
        if self.id not in self.tracker.progress:
            raise ProposalDropped(f"node {self.id} was removed from the configuration")
        if not datas:
            return self.log.last_index()
        size = 0
        for d in datas:
            size += len(d)
        limit = self.max_uncommitted_size
        if limit and self.uncommitted_size and self.uncommitted_size + size > limit:
            raise UncommittedSizeExceeded("too many uncommitted bytes; retry after commits")
        self.uncommitted_size += size
        term, first = self.term, self.log.last_index() + 1
        ents = [Entry(term, first + k, etype, d) for k, d in enumerate(datas)]
        last = self.log.append(ents)
        if publish:
            self.publish_index = last
        self._bcast_append()
        return last

    def propose_conf_change(self, cc: ConfChange) -> int:
        if self.state is StateType.LEADER:
            if self.pending_conf_index > self.log.applied:
                raise ProposalDropped(
                    f"conf change at {self.pending_conf_index} not applied yet "
                    f"(applied: {self.log.applied})"
                )
            if not self._committed_entry_in_current_term():
                raise ProposalDropped("no entry of the leader's term committed yet")
        index = self.propose([cc.encode()], EntryType.CONF_CHANGE)
        self.pending_conf_index = index
        return index

    def apply_conf_change(self, cc: ConfChange) -> ConfState:
        """Switch membership when the driver applies a committed conf entry."""
        nxt = self.log.last_index() + 1
        tr = self.tracker
        if cc.type is ConfChangeType.ADD_NODE:
            tr.set_voter(cc.node_id, nxt)
        elif cc.type is ConfChangeType.ADD_LEARNER:
            tr.set_learner(cc.node_id, nxt)
        elif cc.type is ConfChangeType.REMOVE_NODE:
            tr.remove(cc.node_id)
        if self.state is StateType.LEADER:
            if self.lead_transferee != NONE and not tr.is_voter(self.lead_transferee):
                self.lead_transferee = NONE
            if not tr.is_voter(self.id):
                # We applied our own removal: publish the commit so the
                # others learn it, then leave the stage.
                self._bcast_heartbeat()
                self.become_follower(self.term, NONE)
            elif self._maybe_commit() or self.lazy_commit:
                # A smaller quorum may commit more right away; and a membership
                # change is published at once even with lazy commit, so that the
                # other members apply it (and a removed one leaves) promptly.
                self._bcast_append()
            else:
                # New peers need the log; learners promoted keep their progress.
                for nid in tr.ids():
                    if nid != self.id and tr.progress[nid].match == 0:
                        self._send_append(nid)
        return tr.conf_state()

    def on_stable(self, index: int) -> None:
        """The driver persisted up to `index`: the leader may now count itself."""
        if self.state is not StateType.LEADER:
            return
        own = self.tracker.progress.get(self.id)
        if (
            own is not None
            and own.maybe_update(index)
            and self._maybe_commit()
            and self._commit_to_publish()
        ):
            self._bcast_append()

    def _commit_to_publish(self) -> bool:
        """Commit just moved: whether to tell every follower now. Always without
        lazy commit; with it, only once an entry proposed with `publish` committed."""
        if not self.lazy_commit:
            return True
        if self.publish_index and self.log.committed >= self.publish_index:
            self.publish_index = 0
            return True
        return False

    def reduce_uncommitted_size(self, ents: Sequence[Entry]) -> None:
        if self.state is not StateType.LEADER or not self.uncommitted_size:
            return
        size = 0
        for e in ents:
            size += len(e.data)
        self.uncommitted_size = max(0, self.uncommitted_size - size)

    # -- leases --------------------------------------------------------------

    def lease_status(self, now: float) -> LeaseStatus:
        applied = self.log.applied

        def status(state: LeaseState, expires_at: float = 0.0) -> LeaseStatus:
            return LeaseStatus(state, self.lead, self.term, applied, expires_at)

        if self.state is not StateType.LEADER:
            return status(LeaseState.NOT_LEADER)
        if self.lead_transferee != NONE or self.timeout_now_sent:
            return status(LeaseState.TRANSFERRING)
        if self.term_start_index == 0 or applied < self.term_start_index:
            return status(LeaseState.NO_APPLIED_ENTRY_OF_TERM)
        ack = self.acks.last_quorum_ack
        q = self.quiesced_leader
        if q is not None:
            by_liveness = q.quorum_time(self.tracker.voters, self.id, self.liveness)
            if by_liveness is not None and (ack is None or by_liveness > ack):
                ack = by_liveness
        duration = self.config.lease_duration
        if ack is None or duration <= 0:
            return status(LeaseState.EXPIRED)
        expires = ack + duration
        return status(LeaseState.VALID if now < expires else LeaseState.EXPIRED, expires)
