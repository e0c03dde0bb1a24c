"""The leader's view of one follower's log, and the flow control that follows from it.

A follower's progress is in one of three states:

* PROBE: the leader does not know where the follower's log ends. It sends at
  most one APP per heartbeat interval and waits for the answer (`probe_sent`).
* REPLICATE: the follower is known to match up to `match`; the leader streams
  APPs optimistically, advancing `next` as it sends, bounded by an inflight
  window of `max_inflight_msgs` unacknowledged messages.
* SNAPSHOT: the entries the follower needs are compacted away; a snapshot is
  on its way and nothing else is sent until the driver reports its fate.

Invariant: `0 <= match < next`.
"""

from __future__ import annotations

from collections import deque

from .types import ProgressState


class Inflights:
    """Last indexes of APP messages sent but not yet acknowledged, oldest first."""

    __slots__ = ("_q", "size")

    def __init__(self, size: int) -> None:
        self.size = size
        self._q: deque[int] = deque()

    def add(self, last_index: int) -> None:
        self._q.append(last_index)

    def free_le(self, index: int) -> None:
        """An ack up to `index` frees every message that ended at or before it."""
        q = self._q
        while q and q[0] <= index:
            q.popleft()

    def free_first_one(self) -> None:
        if self._q:
            self._q.popleft()

    def full(self) -> bool:
        return len(self._q) >= self.size

    def count(self) -> int:
        return len(self._q)

    def reset(self) -> None:
        self._q.clear()


class Progress:
    """Replication state of one peer, kept by the leader only."""

    __slots__ = (
        "acked_round",
        "appended_since_beat",
        "inflights",
        "is_learner",
        "match",
        "next",
        "pending_snapshot",
        "probe_sent",
        "recent_active",
        "sent_at_last_beat",
        "state",
    )

    def __init__(self, next_index: int, max_inflight: int, is_learner: bool = False) -> None:
        self.inflights = Inflights(max_inflight)
        self.is_learner = is_learner
        self.reset(next_index)

    def reset(self, next_index: int) -> None:
        """Forget everything learned about the peer (new term or new leader)."""
        self.match = 0
        self.next = next_index
        self.state = ProgressState.PROBE
        self.pending_snapshot = 0
        # CheckQuorum: set on every response, cleared at each election timeout.
        self.recent_active = False
        self.probe_sent = False
        self.inflights.reset()
        # Highest quorum-ack round (see lease.py) this peer has echoed.
        self.acked_round = 0
        # The last index sent when the previous heartbeat answer arrived
        # (`overdue_at_beat`); 0: nothing known to be waiting.
        self.sent_at_last_beat = 0
        # An APP (carrying the newest lease round) went to the peer since the
        # leader's last heartbeat broadcast (Config.lazy_heartbeat).
        self.appended_since_beat = False

    def _reset_state(self, state: ProgressState) -> None:
        self.probe_sent = False
        self.pending_snapshot = 0
        self.state = state
        self.inflights.reset()
        self.sent_at_last_beat = 0

    def become_probe(self) -> None:
        # Leaving SNAPSHOT: the follower has at least the snapshot, so resume after it.
        if self.state is ProgressState.SNAPSHOT:
            pending = self.pending_snapshot
            self._reset_state(ProgressState.PROBE)
            self.next = max(self.match + 1, pending + 1)
        else:
            self._reset_state(ProgressState.PROBE)
            self.next = self.match + 1

    def become_replicate(self) -> None:
        self._reset_state(ProgressState.REPLICATE)
        self.next = self.match + 1

    def become_snapshot(self, snapshot_index: int) -> None:
        self._reset_state(ProgressState.SNAPSHOT)
        self.pending_snapshot = snapshot_index

    def sent_entries(self, count: int, last_index: int) -> None:
        """Flow-control bookkeeping after an APP carrying `count` entries was queued."""
        self.appended_since_beat = True
        if self.state is ProgressState.REPLICATE:
            if count:
                self.next = last_index + 1
                self.inflights.add(last_index)
        elif self.state is ProgressState.PROBE:
            self.probe_sent = True

    def maybe_update(self, n: int) -> bool:
        """The follower acknowledged up to n; returns whether match moved."""
        updated = False
        if self.match < n:
            self.match = n
            self.probe_sent = False
            updated = True
        if self.next < n + 1:
            self.next = n + 1
        return updated

    def maybe_decr_to(self, rejected: int, match_hint: int) -> bool:
        """The follower rejected an APP whose previous index was `rejected`.

        Returns False for stale rejections (answers to messages superseded
        since), which must not move `next` backwards again.
        """
        if self.state is ProgressState.REPLICATE:
            if rejected <= self.match:
                return False
            self.next = self.match + 1
            return True
        if self.next - 1 != rejected:
            return False
        self.next = max(min(rejected, match_hint + 1), self.match + 1)
        self.probe_sent = False
        return True

    def overdue_at_beat(self) -> bool:
        """A heartbeat answer arrived: whether entries already sent when the PREVIOUS
        answer arrived are still unacknowledged.

        Heartbeat answers come at most once per heartbeat interval per round (more
        often only when ReadIndex opens rounds), so such entries have had about an
        interval or more: they were lost or are stuck, and resending them is worth
        its cost. Entries sent since are merely in flight: their own answers are on
        the way, and an APP for them would only be answered a second time.
        """
        overdue = self.match < self.sent_at_last_beat
        self.sent_at_last_beat = self.next - 1
        return overdue

    def is_paused(self) -> bool:
        if self.state is ProgressState.PROBE:
            return self.probe_sent
        if self.state is ProgressState.REPLICATE:
            return self.inflights.full()
        return True
