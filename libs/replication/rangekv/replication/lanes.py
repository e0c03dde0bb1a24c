"""Dispatcher lanes: which messages travel together, and the queue of one lane.

A node talks to each peer over four independent lanes (see raft.proto). The
split exists because one slow kind of traffic must never hold up another: a
50 MB snapshot or a burst of appends behind a full flow-control window would
otherwise delay heartbeats past the election timeout and cause spurious
elections (heartbeats starved by a single dispatch worker is a known way for a
raft cluster to lose its leaders under load). Hence:

- HEARTBEAT: small, latency-critical leadership traffic (heartbeats, votes,
  read-index, timeout-now). Coalesced: only the newest heartbeat per
  (group, to) is worth sending.
- REPLICATION: appends and their responses; order within a peer matters.
- SNAPSHOT: SNAP messages, each expanding into a long SendSnapshot stream.
- OTHER: whatever is left (e.g. a forwarded TRANSFER_LEADER).

This module also holds the small seams the transport needs from the outside
(metrics), so that transport.py stays about connections and workers.
"""

from __future__ import annotations

import asyncio
import enum
from collections import deque
from collections.abc import Sequence
from typing import Final, Protocol

from rangekv.raft import Message, MessageType
from rangekv.v1 import raft_pb2, types_pb2

__all__ = [
    "DROP_METRIC",
    "ERRORS_METRIC",
    "FRAMES_METRIC",
    "MESSAGES_METRIC",
    "UNBOUNDED",
    "Counter",
    "CounterFactory",
    "InMemoryCounter",
    "InMemoryTransportMetrics",
    "Lane",
    "LaneQueue",
    "Outbound",
    "TelemetryTransportMetrics",
    "TransportMetrics",
    "lane_for",
]


class Lane(enum.IntEnum):
    """A dispatcher lane; values equal the wire enum `rangekv.v1.RaftLane`."""

    HEARTBEAT = raft_pb2.RAFT_LANE_HEARTBEAT
    REPLICATION = raft_pb2.RAFT_LANE_REPLICATION
    SNAPSHOT = raft_pb2.RAFT_LANE_SNAPSHOT
    OTHER = raft_pb2.RAFT_LANE_OTHER

    @property
    def label(self) -> str:
        """Metric label value, e.g. "heartbeat"."""
        return self.name.lower()


_LANE_OF: Final[dict[MessageType, Lane]] = {
    MessageType.HEARTBEAT: Lane.HEARTBEAT,
    MessageType.HEARTBEAT_RESP: Lane.HEARTBEAT,
    MessageType.VOTE: Lane.HEARTBEAT,
    MessageType.VOTE_RESP: Lane.HEARTBEAT,
    MessageType.PRE_VOTE: Lane.HEARTBEAT,
    MessageType.PRE_VOTE_RESP: Lane.HEARTBEAT,
    MessageType.READ_INDEX: Lane.HEARTBEAT,
    MessageType.READ_INDEX_RESP: Lane.HEARTBEAT,
    MessageType.TIMEOUT_NOW: Lane.HEARTBEAT,
    MessageType.APP: Lane.REPLICATION,
    MessageType.APP_RESP: Lane.REPLICATION,
    MessageType.SNAP: Lane.SNAPSHOT,
}


def lane_for(msg_type: MessageType) -> Lane:
    """The lane a message of `msg_type` travels on (OTHER for anything unlisted)."""
    return _LANE_OF.get(msg_type, Lane.OTHER)


# --------------------------------------------------------------------------- metrics

#: Counter base names; the Prometheus exporter appends `_total`, giving
#: rangekv_raft_dispatch_drop_total{lane,type} and
#: rangekv_raft_dispatch_errors_total{lane,code}.
DROP_METRIC: Final = "rangekv_raft_dispatch_drop"
ERRORS_METRIC: Final = "rangekv_raft_dispatch_errors"
#: rangekv_raft_frames_sent_total{lane}, rangekv_raft_messages_sent_total{lane}: stream
#: writes to peers, and the raft messages they carried (messages per frame is how
#: well the lanes batch; per raft entry, what one entry costs on the wire).
FRAMES_METRIC: Final = "rangekv_raft_frames_sent"
MESSAGES_METRIC: Final = "rangekv_raft_messages_sent"


class Counter(Protocol):
    """What the transport needs of a counter (`rangekv.common.telemetry.Counter` fits)."""

    def add(self, amount: int = 1, **labels: str) -> None: ...


class TransportMetrics(Protocol):
    """The transport's counters."""

    @property
    def dispatch_drop_total(self) -> Counter:
        """Labels lane, type: a message dropped locally because its lane queue was full."""
        ...

    @property
    def dispatch_errors_total(self) -> Counter:
        """Labels lane, code: a send that failed (connect refused, stream broken, ...)."""
        ...

    @property
    def frames_sent_total(self) -> Counter:
        """Label lane: a stream write to a peer (one RaftStreamRequest)."""
        ...

    @property
    def messages_sent_total(self) -> Counter:
        """Label lane: the raft messages those writes carried."""
        ...


class CounterFactory(Protocol):
    """The part of `rangekv.common.telemetry.Telemetry` that declares counters."""

    def counter(
        self, name: str, description: str, *, unit: str = "", labels: Sequence[str] = ()
    ) -> Counter: ...


class TelemetryTransportMetrics:
    """The transport's counters declared on a process's telemetry."""

    def __init__(self, telemetry: CounterFactory) -> None:
        self.dispatch_drop_total = telemetry.counter(
            DROP_METRIC,
            "Raft messages dropped before sending because their lane queue was full",
            labels=("lane", "type"),
        )
        self.dispatch_errors_total = telemetry.counter(
            ERRORS_METRIC,
            "Raft sends that failed (peer unreachable, stream broken, wrong node)",
            labels=("lane", "code"),
        )
        self.frames_sent_total = telemetry.counter(
            FRAMES_METRIC, "Stream writes of raft messages to peers", labels=("lane",)
        )
        self.messages_sent_total = telemetry.counter(
            MESSAGES_METRIC, "Raft messages written to peers", labels=("lane",)
        )
        # The drop series of every (lane, type) pair start at 0, so a dashboard
        # shows "no drops" rather than no data.
        for msg_type, lane in _LANE_OF.items():
            self.dispatch_drop_total.add(0, lane=lane.label, type=msg_type.name.lower())


class InMemoryCounter:
    """A counter keyed by its label set; for tests and for processes without OTel."""

    def __init__(self) -> None:
        self.values: dict[tuple[tuple[str, str], ...], int] = {}

    def add(self, amount: int = 1, **labels: str) -> None:
        key = tuple(sorted(labels.items()))
        self.values[key] = self.values.get(key, 0) + amount

    def value(self, **labels: str) -> int:
        """Sum over every label set that contains all of `labels`."""
        want = set(labels.items())
        return sum(v for k, v in self.values.items() if want <= set(k))


class InMemoryTransportMetrics:
    def __init__(self) -> None:
        self.dispatch_drop_total = InMemoryCounter()
        self.dispatch_errors_total = InMemoryCounter()
        self.frames_sent_total = InMemoryCounter()
        self.messages_sent_total = InMemoryCounter()


# ----------------------------------------------------------------------------- queue

#: One queued message: (group id, raft message, descriptor or None).
Outbound = tuple[int, Message, types_pb2.RangeDescriptor | None]

#: A `max_bytes` that never splits a drain (skips the size estimate).
UNBOUNDED: Final = 1 << 62

_HEARTBEAT: Final = MessageType.HEARTBEAT
# Rough wire cost of a message without its payloads; only used to cap batches.
_MESSAGE_OVERHEAD: Final = 48
_ENTRY_OVERHEAD: Final = 16
_DESCRIPTOR_ESTIMATE: Final = 256


def _approx_size(item: Outbound) -> int:
    msg = item[1]
    size = _MESSAGE_OVERHEAD + len(msg.context)
    for e in msg.entries:
        size += _ENTRY_OVERHEAD + len(e.data)
    if item[2] is not None:
        size += _DESCRIPTOR_ESTIMATE
    return size


class LaneQueue:
    """Bounded FIFO of one (peer, lane), filled synchronously, drained in batches.

    Invariants:
    - `_live` counts queued messages that will be sent; `_live <= capacity`.
    - With coalescing on, `_latest[(group, to)]` is the newest queued HEARTBEAT
      for that pair. An older heartbeat of the pair stays in `_items` as a
      tombstone (skipped when drained) instead of being removed from the middle
      of the deque. So the messages that leave are always a subsequence of the
      messages put, in put order: coalescing never reorders.
    - `_stale` counts tombstones; they are compacted away once they outnumber
      the capacity, so a stalled worker cannot make the deque grow unbounded.
    """

    __slots__ = ("_capacity", "_coalesce", "_items", "_latest", "_live", "_nonempty", "_stale")

    def __init__(self, capacity: int, *, coalesce_heartbeats: bool = False) -> None:
        if capacity < 1:
            raise ValueError("lane capacity must be >= 1")
        self._capacity = capacity
        self._coalesce = coalesce_heartbeats
        self._items: deque[Outbound] = deque()
        self._latest: dict[tuple[int, int], Outbound] = {}
        self._live = 0
        self._stale = 0
        self._nonempty = asyncio.Event()

    def __len__(self) -> int:
        return self._live

    @property
    def capacity(self) -> int:
        return self._capacity

    def put(self, item: Outbound) -> bool:
        """Queue `item`; False (and nothing queued) when the lane is full."""
        if self._coalesce and item[1].type is _HEARTBEAT:
            key = (item[0], item[1].to)
            if key in self._latest:
                # Supersede: the live count is unchanged, so this never drops.
                self._latest[key] = item
                self._items.append(item)
                self._stale += 1
                if self._stale > self._capacity:
                    self._compact()
                return True
            if self._live >= self._capacity:
                return False
            self._latest[key] = item
        elif self._live >= self._capacity:
            return False
        self._items.append(item)
        self._live += 1
        if not self._nonempty.is_set():
            self._nonempty.set()
        return True

    def _is_tombstone(self, item: Outbound) -> bool:
        return (
            self._coalesce
            and item[1].type is _HEARTBEAT
            and self._latest.get((item[0], item[1].to)) is not item
        )

    def _compact(self) -> None:
        self._items = deque(i for i in self._items if not self._is_tombstone(i))
        self._stale = 0

    def drain(self, max_bytes: int) -> list[Outbound]:
        """Pop queued messages in order while their estimated size fits `max_bytes`.

        At least one message is returned when any is queued, however large, so
        a single oversized message cannot wedge the lane; `max_bytes=0` thus
        means "one message".
        """
        items = self._items
        out: list[Outbound] = []
        size = 0
        while items:
            item = items[0]
            if self._is_tombstone(item):
                items.popleft()
                self._stale -= 1
                continue
            if max_bytes != UNBOUNDED:
                cost = _approx_size(item)
                if out and size + cost > max_bytes:
                    break
                size += cost
            items.popleft()
            if self._coalesce and item[1].type is _HEARTBEAT:
                del self._latest[(item[0], item[1].to)]
            out.append(item)
            self._live -= 1
        if self._live == 0:
            self._nonempty.clear()
        return out

    async def get_batch(self, max_bytes: int) -> list[Outbound]:
        """Wait until something is queued, then `drain(max_bytes)`."""
        while self._live == 0:
            self._nonempty.clear()
            await self._nonempty.wait()
        return self.drain(max_bytes)

    def clear(self) -> list[Outbound]:
        """Drop everything queued; returns what was live (for the caller to report)."""
        out = self.drain(UNBOUNDED)
        self._items.clear()
        self._latest.clear()
        self._stale = 0
        return out
