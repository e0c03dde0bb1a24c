"""Node-level liveness between raft-hosting processes: what quiesced groups' leases rest on.

A quiesced group (rangekv/raft/quiesce.py) neither ticks nor heartbeats; its
leader's lease rests on liveness heartbeats its node exchanges with every peer
node ONCE per heartbeat interval, whatever the number of groups they share.
`NodeLiveness` is that exchange for one process incarnation:

* the host's ticker calls `on_tick(now)`: every `beat_ticks(timing)` ticks one
  beat to each peer node (the clock read before sending), and every tick the
  lapse check: a peer not heard for `LAPSE_ELECTION_TIMEOUTS` election
  timeouts is declared unreachable -- a new session toward it begins, and
  `on_lapse(peer)` wakes the quiesced followers that peer's node leads (the
  host does that). A tick that comes late (this process stalled, and could
  not take the beats that arrived meanwhile) forgives every peer first: a
  stall of our own must not look like everyone else's;
* a received beat is answered with this node's session toward the sender; a
  beat from a new incarnation of the sender counts as a lapse first;
* a received answer updates the table every group's `GroupLiveness` view reads.

The messages are raft `Message`s on the reserved group `LIVENESS_GROUP` (0; no
range or meta group uses it), so they travel the raft transport with its clock
check, lanes and back-pressure: a beat is a HEARTBEAT (index = sequence,
commit = the sender's incarnation, context = its send time), an answer a
HEARTBEAT_RESP (index = sequence, commit = session, context = the beat's send
time). The table itself is `rangekv.raft.liveness_table.LivenessTable` (pure),
the one the raft simulator checks the lease argument with.
"""

from __future__ import annotations

import random
import struct
from collections.abc import Callable, Iterable
from typing import Final

from rangekv.raft import LivenessAck, LivenessStamp, Message, MessageType
from rangekv.raft.liveness_table import (
    SESSION_SPACING,
    LivenessAnswer,
    LivenessBeat,
    LivenessTable,
)
from rangekv.replication.raft_network import RaftSender
from rangekv.replication.timing import RaftTiming

__all__ = ["LIVENESS_GROUP", "GroupLiveness", "NodeLiveness"]

#: The raft group id liveness messages travel under (range and meta ids start at 1).
LIVENESS_GROUP: Final = 0

_TIME = struct.Struct(">d")
#: Ticks between refreshes of the peer-node list (it changes with replica placement).
PEER_REFRESH_TICKS = 10
#: A peer unheard for this many election timeouts is declared unreachable. The
#: lease argument does not depend on it; a false lapse wakes every range the peer
#: leads here (and they their leaders), so it is kept well above a process stall.
LAPSE_ELECTION_TIMEOUTS = 2
#: A tick this many intervals late means this process stalled (`forgive`).
STALL_TICKS = 3


def beat_ticks(timing: RaftTiming) -> int:
    """Ticks between beats to a peer: a quarter of the election timeout (at least a
    heartbeat interval). A lease lasts most of an election timeout, so a quorum's
    answers renew it several times over, and a peer misses about four beats before
    it declares this node unreachable -- at a quarter of the raft heartbeat rate."""
    return max(timing.heartbeat_ticks, timing.election_ticks // 4)


class GroupLiveness:
    """One group's view of the node's table (`rangekv.raft.Liveness`): replica ids
    of the group map to node ids through `node_of` (None: not a known replica)."""

    __slots__ = ("_node_of", "_table")

    def __init__(self, table: LivenessTable, node_of: Callable[[int], int | None]) -> None:
        self._table = table
        self._node_of = node_of

    def node_of(self, replica_id: int) -> int | None:
        return self._node_of(replica_id)

    def stamp(self, peer: int) -> LivenessStamp | None:
        node = self._node_of(peer)
        return None if node is None else self._table.stamp(node)

    def acked(self, peer: int) -> LivenessAck | None:
        node = self._node_of(peer)
        return None if node is None else self._table.acked(node)


class NodeLiveness:
    """This process's side of the exchange (see the module docstring)."""

    def __init__(
        self,
        node_id: int,
        sender: RaftSender,
        timing: RaftTiming,
        rng: random.Random,
        now: float,
        *,
        peers: Callable[[], Iterable[int]],
        on_lapse: Callable[[int], None],
        on_new_session: Callable[[int], None] = lambda _node: None,
    ) -> None:
        """`peers()`: the nodes this one shares groups with (read every few ticks);
        `on_lapse(node)`: that node was declared unreachable (or restarted);
        `on_new_session(node)`: that node began a new session toward this one (it
        declared this node unreachable and woke its followers of our leaders)."""
        self.node_id = node_id
        self._sender = sender
        self._timing = timing
        self._peers_fn = peers
        self._on_lapse = on_lapse
        self._on_new_session = on_new_session
        self.incarnation = rng.getrandbits(62) | 1
        base = rng.randrange(1, 1 << 24) * SESSION_SPACING
        self.table = LivenessTable(node_id, base, now)
        self._peers: list[int] = []
        self._ticks = 0
        self._last_tick = now
        self.beats_sent = 0
        self.lapses = 0

    def view(self, node_of: Callable[[int], int | None]) -> GroupLiveness:
        return GroupLiveness(self.table, node_of)

    def on_tick(self, now: float) -> None:
        timing = self._timing
        if now - self._last_tick > STALL_TICKS * timing.tick_interval:
            self.table.forgive(now)
        self._last_tick = now
        if self._ticks % PEER_REFRESH_TICKS == 0:
            self._peers = sorted(p for p in set(self._peers_fn()) if p != self.node_id)
        self._ticks += 1
        if self._ticks % beat_ticks(timing) == 0:
            for peer in self._peers:
                self._send_beat(self.table.beat(peer, now, self.incarnation))
        timeout = LAPSE_ELECTION_TIMEOUTS * timing.election_ticks * timing.tick_interval
        for peer in self.table.lapse(self._peers, now, timeout):
            self._lapse(peer)

    def handle(self, msg: Message, now: float) -> None:
        """A message received on `LIVENESS_GROUP` (malformed ones are dropped)."""
        if len(msg.context) != _TIME.size or msg.to != self.node_id:
            return
        (sent_at,) = _TIME.unpack(msg.context)
        if msg.type is MessageType.HEARTBEAT:
            beat = LivenessBeat(msg.sender, msg.to, msg.index, sent_at, msg.commit)
            answer, restarted = self.table.on_beat(beat, now)
            if restarted:
                self._lapse(msg.sender)
            self._send(
                MessageType.HEARTBEAT_RESP, answer.to, answer.seq, answer.session, answer.sent_at
            )
        elif msg.type is MessageType.HEARTBEAT_RESP:
            answer = LivenessAnswer(msg.sender, msg.to, msg.commit, msg.index, sent_at)
            if self.table.on_answer(answer):
                self._on_new_session(msg.sender)

    def _lapse(self, peer: int) -> None:
        self.lapses += 1
        self._on_lapse(peer)

    def _send_beat(self, beat: LivenessBeat) -> None:
        self.beats_sent += 1
        self._send(MessageType.HEARTBEAT, beat.to, beat.seq, beat.incarnation, beat.sent_at)

    def _send(self, kind: MessageType, to: int, seq: int, value: int, sent_at: float) -> None:
        """The one encoding of a liveness message (`handle` is its decoding; the
        module docstring has the layout): index = sequence, commit = incarnation
        (beat) or session (answer), context = the beat's send time."""
        self._sender.send(
            to,
            LIVENESS_GROUP,
            Message(kind, to, self.node_id, index=seq, commit=value, context=_TIME.pack(sent_at)),
        )
