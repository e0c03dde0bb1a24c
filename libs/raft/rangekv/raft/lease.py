"""Quorum-ack rounds: the evidence behind leader leases and ReadIndex.

Leases
------

A *round* is a leader-local counter. The leader opens a new round at every
heartbeat broadcast (and when it becomes leader or registers a ReadIndex
request), stamping it with the `now` of the latest `tick(now)`. Every APP and
HEARTBEAT it sends carries the newest round, and followers echo it back.

Which responses count as an ack of round r (all must be of the leader's term,
which `Raft.step` guarantees before any role-specific code runs):

* HEARTBEAT_RESP echoing r: the follower received a heartbeat sent in round r.
* APP_RESP echoing r, *accepted or rejected*: either way the follower took an
  APP of the leader's term sent in round r, so it reset its election timer
  and recognises the leader; log agreement is irrelevant for the lease.

VOTE/PRE_VOTE responses never count (they are not answers to the leader).

The send-time stamp is the driver's clock reading at the tick *before* the
messages left, so it is never later than the real send time: using it keeps
queueing and network delay from stretching the lease, and a follower that
acked round r heard from the leader after `send_time(r)`.

Invariant: `last_quorum_ack` is None or the send time of a round acked by a
quorum of the current configuration in the current term, opened after the
last `clear()`.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

#: Rounds remembered while waiting for a quorum; older ones are forgotten,
#: which can only shorten a lease (we lose evidence, never invent it).
MAX_PENDING_ROUNDS = 1024


class QuorumAckTracker:
    """Round numbering, send times, and the newest quorum-acked send time."""

    __slots__ = ("_send_times", "acked_round", "last_quorum_ack", "round")

    def __init__(self) -> None:
        # Monotone for the node's lifetime: a round number is never reused.
        self.round = 0
        self.acked_round = 0
        self.last_quorum_ack: float | None = None
        self._send_times: deque[tuple[int, float]] = deque()

    def open_round(self, now: float) -> int:
        self.round += 1
        self._send_times.append((self.round, now))
        if len(self._send_times) > MAX_PENDING_ROUNDS:
            self._send_times.popleft()
        return self.round

    def on_quorum_round(self, r: int) -> bool:
        """A quorum has now echoed round >= r; returns whether that is news."""
        if r <= self.acked_round:
            return False
        self.acked_round = r
        q = self._send_times
        newest: float | None = None
        while q and q[0][0] <= r:
            newest = q.popleft()[1]
        if newest is not None and (self.last_quorum_ack is None or newest > self.last_quorum_ack):
            self.last_quorum_ack = newest
        return True

    def adopt(self, send_time: float) -> None:
        """Evidence gathered elsewhere (a quiesced leader's liveness acks, quiesce.py):
        a quorum acknowledged something sent at `send_time`, in this leadership."""
        if self.last_quorum_ack is None or send_time > self.last_quorum_ack:
            self.last_quorum_ack = send_time

    def clear(self) -> None:
        """Forget all evidence: only rounds opened after this call may extend a lease.

        Forgetting the send times too (not just `last_quorum_ack`) matters: an
        ack of a round sent before a transfer started must not revive the lease
        after the transfer is aborted.
        """
        self.last_quorum_ack = None
        self._send_times.clear()


# -- ReadIndex ----------------------------------------------------------------
# ReadIndex: linearizable reads without writing to the log (Raft thesis §6.4).
#
# The leader records its commit index when a read arrives, then proves it is
# still leader by a heartbeat round opened *after* the request: once a quorum
# echoes that round (or a later one), no newer leader can have committed
# anything the recorded index misses, so the read may be served when
# `applied >= index`.
#
# Reads are released in arrival order; because rounds grow monotonically, a
# quorum ack of round r releases every request registered at a round <= r.
# Pending reads die with the leader's term; clients retry on timeout.


@dataclass(frozen=True, slots=True)
class ReadRequest:
    index: int
    context: bytes
    requester: int
    round: int


class ReadOnly:
    """Queue of ReadIndex requests waiting for their confirming round."""

    __slots__ = ("_pending",)

    def __init__(self) -> None:
        self._pending: deque[ReadRequest] = deque()

    def add(self, req: ReadRequest) -> None:
        self._pending.append(req)

    def release(self, acked_round: int) -> list[ReadRequest]:
        """Requests confirmed by a quorum ack of `acked_round`, oldest first."""
        out: list[ReadRequest] = []
        q = self._pending
        while q and q[0].round <= acked_round:
            out.append(q.popleft())
        return out

    def pending(self) -> int:
        return len(self._pending)

    def reset(self) -> None:
        self._pending.clear()
