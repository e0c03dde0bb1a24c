"""Node-level liveness: the table quiesced groups' leases rest on (pure; no I/O).

One `LivenessTable` per node process incarnation (volatile: a restart draws a
new session base). Every group of the node reads it as its `rangekv.raft.Liveness`
(through a view that maps the group's replica ids to node ids); the driver feeds
it (quiesce.py has the protocol and the lease argument; the simulator's driver,
`simulation/quiescence.py`, and rangekv.replication's `liveness.py` both use it):

* at a fixed interval (well inside the lease) a node sends each peer node a beat
  (sequence number, its clock reading before sending, its incarnation);
* the peer answers with its session toward the sender; it starts a new
  session (and unquiesces a follower led by the sender) when it has not heard
  the sender for the lapse timeout, or hears a new incarnation of it;
* the sender keeps the newest answer per peer.

The messages travel over the same network as Raft's (the simulated one, or the
raft transport between processes). Times are the owning node's clock readings.
"""

from __future__ import annotations

from dataclasses import dataclass

from .quiesce import LivenessAck, LivenessStamp

#: Sessions toward one peer are `base + k`; bases are far apart per incarnation.
SESSION_SPACING = 1 << 32


@dataclass(frozen=True, slots=True)
class LivenessBeat:
    """A liveness heartbeat from `sender` to `to`."""

    sender: int
    to: int
    seq: int
    sent_at: float
    incarnation: int


@dataclass(frozen=True, slots=True)
class LivenessAnswer:
    """`sender`'s answer to heartbeat `seq` of `to`, in `sender`'s session toward `to`."""

    sender: int
    to: int
    session: int
    seq: int
    sent_at: float


class LivenessTable:
    """One node incarnation's liveness table (implements `rangekv.raft.Liveness`)."""

    def __init__(self, node_id: int, session_base: int, started_at: float) -> None:
        self.node_id = node_id
        self._base = session_base
        self._started_at = started_at
        #: My session toward each peer (offset from the base) and the next seq I send it.
        self._session: dict[int, int] = {}
        self._next_seq: dict[int, int] = {}
        #: Each peer's session toward me as last reported, and its newest answer.
        self._reported: dict[int, int] = {}
        self._acks: dict[int, LivenessAck] = {}
        #: When I last heard each peer (local time), which incarnation, and who lapsed.
        self._heard: dict[int, float] = {}
        self._incarnation: dict[int, int] = {}
        self._lapsed: set[int] = set()

    # -- rangekv.raft.Liveness ---------------------------------------------------

    def stamp(self, peer: int) -> LivenessStamp | None:
        session = self._reported.get(peer)
        if session is None:
            return None
        return LivenessStamp(session, self._next_seq.get(peer, 1))

    def acked(self, peer: int) -> LivenessAck | None:
        return self._acks.get(peer)

    # -- the driver's side ---------------------------------------------------------

    def session_toward(self, peer: int) -> int:
        return self._base + self._session.get(peer, 0)

    def beat(self, peer: int, now: float, incarnation: int) -> LivenessBeat:
        seq = self._next_seq.get(peer, 1)
        self._next_seq[peer] = seq + 1
        return LivenessBeat(self.node_id, peer, seq, now, incarnation)

    def on_beat(self, beat: LivenessBeat, now: float) -> tuple[LivenessAnswer, bool]:
        """Hear a peer; returns the answer and whether a new session began toward it
        (the peer restarted: a different incarnation than the one heard before)."""
        peer = beat.sender
        known = self._incarnation.get(peer)
        restarted = known is not None and known != beat.incarnation
        if restarted:
            self._new_session(peer)
        self._incarnation[peer] = beat.incarnation
        self._heard[peer] = now
        self._lapsed.discard(peer)
        answer = LivenessAnswer(
            self.node_id, peer, self.session_toward(peer), beat.seq, beat.sent_at
        )
        return answer, restarted

    def on_answer(self, answer: LivenessAnswer) -> bool:
        """Keep the answer to the newest heartbeat (a late or duplicated one is older).
        True when it reports a new session: the peer declared this node unreachable
        (or restarted) and woke the followers this node leads there, which will
        campaign unless their leaders wake and heartbeat them (the driver's cue)."""
        peer = answer.sender
        old = self._acks.get(peer)
        if old is None or answer.seq > old.seq:
            self._reported[peer] = answer.session
            self._acks[peer] = LivenessAck(answer.session, answer.seq, answer.sent_at)
            return old is not None and old.session != answer.session
        return False

    def lapse(self, peers: list[int], now: float, timeout: float) -> list[int]:
        """Peers not heard for `timeout` (local time), newly declared unreachable:
        a new session begins toward each."""
        out: list[int] = []
        for peer in peers:
            if peer in self._lapsed:
                continue
            if now - self._heard.get(peer, self._started_at) > timeout:
                self._lapsed.add(peer)
                self._new_session(peer)
                out.append(peer)
        return out

    def forgive(self, now: float) -> None:
        """This node itself stalled (it could not take the beats that arrived): give
        every peer a fresh lapse window from `now` rather than declare it unreachable
        on beats still queued. Lapses only wake followers; their timing is not part
        of the lease argument, so this costs nothing but a later failover."""
        for peer in self._heard:
            self._heard[peer] = max(self._heard[peer], now)
        self._started_at = max(self._started_at, now)

    def _new_session(self, peer: int) -> None:
        self._session[peer] = self._session.get(peer, 0) + 1
