"""Quiescence: an idle group stops ticking and heartbeating, and its lease lives on.

An idle range costs a tick per tick interval on every replica and a heartbeat
round per heartbeat interval. With thousands of ranges per node that is the
whole CPU. A *quiesced* group does neither; the liveness heartbeats its nodes
exchange anyway (one per node pair, shared by every range of the pair) keep
its lease.

Entering (`Raft.quiesce`, called by the driver on an idle leader): the leader
must hold a lease-worthy state -- an applied entry of its term, nothing
proposed or unapplied, every peer's log matched to the last index, no read,
conf change or transfer pending. It opens a round and sends each peer a
HEARTBEAT carrying `QUIESCE_CONTEXT`, then stops ticking. A follower whose log
ends exactly at the commit index the heartbeat carries quiesces too (stops
ticking, keeps its leader) and answers HEARTBEAT_RESP with `QUIESCE_CONTEXT`;
any other follower answers a plain heartbeat response and the leader wakes.

Leaving: the leader wakes on any proposal, ReadIndex, transfer, or message
other than a heartbeat response of its term (a pre-vote of a follower that
missed the quiesce, a refused quiesce); waking sends a heartbeat round at once.
A follower wakes on a message of its leader (APP, a plain HEARTBEAT, SNAP,
TIMEOUT_NOW), on a new term, or when its node declares the leader's node
unreachable (`Raft.unquiesce`, called by the driver -- the only other way).

Liveness, the input: every node sends every peer node a liveness heartbeat
at a fixed interval well inside the lease (the simulator: each heartbeat
interval; rangekv.replication: each quarter election timeout), numbered by a per-peer sequence and stamped with the
sender's clock read *before* it left (never later than the real send time,
as a round's send time is); the peer answers with its current *session*
toward the sender. A node starts a new session toward a peer (a number never
used before toward it) when it restarts and whenever it declares that peer
unreachable -- and declaring it unreachable is exactly when it unquiesces
every range that peer's node leads. `Liveness` is the driver's table of
these, per peer replica of one group: `stamp(peer)` (the peer's session as
last reported, and the sequence number the next heartbeat to it will carry)
and `acked(peer)` (the newest heartbeat it answered: session, sequence, send
time).

The lease argument (in the model of `lease.py` and OVERVIEW.md: what each voter
promises, and for how long). The leader records, when peer P's quiescing
answer arrives, `stamps[P] = liveness.stamp(P)` = (s, k). Later, P's answer to
a liveness heartbeat h with sequence >= k and session == s counts as P's ack
of a round sent at h's send time t_h. Claim: P refuses every (pre-)vote in a
higher term from receiving h until (election_tick - 1) of its ticks later, at
least -- the promise a heartbeat ack makes in an awake group. Because:

* h left after the leader received P's quiescing answer (sequence >= k), so P
  had quiesced before it received h.
* A quiesced follower does not tick, so its election timer stays below the
  election timeout and it keeps its leader: leader stickiness makes it ignore
  every non-forced (pre-)vote but its leader's own, and it never campaigns
  (`_hup` is refused). Only its leader can force it (TIMEOUT_NOW), and a
  leader sending one has woken, and its lease is void (TRANSFERRING) anyway;
  a (pre-)vote of its leader at a higher term means that leader stepped down,
  and a stepped-down leader holds no lease.
* P left quiescence after receiving h only (a) by a message of the leader,
  which woke first and stopped counting liveness (the evidence it folded into
  its lease at waking was gathered before and is still covered by P's
  promise); (b) by its node declaring the leader's node unreachable, which
  starts a new session -- so P was still in session s when it received h and
  declared after it, and from that moment its election timer restarts at 0:
  (election_tick - 1) full ticks before it may vote or campaign; (c) by a
  restart: the boot quiet period (`Raft.__init__`) refuses for election_tick
  ticks; (d) by a message of a newer term: a newer leader, elected by a
  quorum that must include a voter whose promise had run out.
* If P had left quiescence *before* receiving h by (b) or (c), its session at
  h is not s and h does not count; by (a), the leader is awake and counts
  nothing.

So an answered liveness heartbeat is worth exactly an acked heartbeat round,
and the lease is unchanged: a quorum of voters (the leader counts itself)
with counted acks at send times >= t gives `last_quorum_ack >= t`, and the
lease is valid while `now - t < lease_duration`, with the same derivation
(`lease_duration * (1 + drift) < (election_tick - 1) * tick * (1 - drift)`).
Sessions are drawn so that a node never reuses one toward the same peer
(drivers draw a random 64-bit base per incarnation and count up from it).

If liveness answers stop (the leader's node is cut off), the lease runs out by
itself, and the followers' nodes declare the leader's node unreachable and
unquiesce: an election follows after an election timeout, as in an awake group
that stopped hearing heartbeats.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from .types import ProgressState, StateType

if TYPE_CHECKING:
    from .raft import Raft

#: The context of a quiescing HEARTBEAT and of the follower's answer that it quiesced.
QUIESCE_CONTEXT = b"rangekv/quiesce"


@dataclass(frozen=True, slots=True)
class LivenessStamp:
    """Where node-level liveness toward a peer stands now (see the module docstring)."""

    session: int
    #: The sequence number the next liveness heartbeat to the peer will carry.
    next_seq: int


@dataclass(frozen=True, slots=True)
class LivenessAck:
    """The newest liveness heartbeat a peer answered."""

    session: int
    seq: int
    #: The sender's clock when the heartbeat left (the unit of `now`).
    sent_at: float


class Liveness(Protocol):
    """The node-level liveness table, as one group sees it (keyed by peer replica id)."""

    def stamp(self, peer: int) -> LivenessStamp | None:
        """None while the peer's node never answered (no session known)."""
        ...

    def acked(self, peer: int) -> LivenessAck | None: ...


class NoLiveness:
    """No liveness exchange: a quiesced leader's lease simply runs out."""

    def stamp(self, peer: int) -> LivenessStamp | None:
        return None

    def acked(self, peer: int) -> LivenessAck | None:
        return None


NO_LIVENESS = NoLiveness()


class QuiescedLeader:
    """A quiesced leader's evidence: the quiesce round and each peer's stamp."""

    __slots__ = ("round", "stamps")

    def __init__(self, round_: int) -> None:
        self.round = round_
        self.stamps: dict[int, LivenessStamp] = {}

    def quorum_time(
        self, voters: tuple[int, ...], self_id: int, liveness: Liveness
    ) -> float | None:
        """The newest send time a quorum of voters acked by liveness (the leader counts
        itself at any time); None when no quorum has counted acks."""
        need = len(voters) // 2 + 1
        times: list[float] = []
        for v in voters:
            if v == self_id:
                need -= 1
                continue
            stamp = self.stamps.get(v)
            if stamp is None:
                continue
            ack = liveness.acked(v)
            if ack is not None and ack.session == stamp.session and ack.seq >= stamp.next_seq:
                times.append(ack.sent_at)
        if need <= 0:
            return None  # a single voter never quiesces (`Raft.can_quiesce`)
        if len(times) < need:
            return None
        times.sort(reverse=True)
        return times[need - 1]


def may_quiesce(r: Raft) -> bool:
    """An awake leader with nothing in flight whose lease is worth keeping: an
    applied entry of its term, everything proposed committed, applied and durable,
    every peer (voter or learner) replicating with the whole log, and no read,
    conf change or transfer pending. A single voter never quiesces (no liveness
    peer to keep its lease)."""
    if r.state is not StateType.LEADER or r.quiesced:
        return False
    log = r.log
    last = log.last_index()
    if (
        log.committed != last
        or log.applied != last
        or log.stable_last_index() != last
        or r.term_start_index == 0
        or r.term_start_index > last
        or r.lead_transferee != 0
        or r.timeout_now_sent
        or r.pending_read_index
        or r.read_only.pending()
        or r.pending_conf_index > log.applied
        or r.uncommitted_size
    ):
        return False
    peers = 0
    for nid, pr in r.tracker.progress.items():
        if nid == r.id:
            continue
        peers += 1
        if pr.match != last or pr.state is not ProgressState.REPLICATE or pr.inflights.count():
            return False
    return peers > 0 and r.id in r.tracker.voters
