"""The raft transport's knobs: channel options, lane capacities, reconnect backoff."""

from __future__ import annotations

import random
from dataclasses import dataclass

from .lanes import Lane
from .transport_server import MAX_MESSAGE_BYTES

__all__ = ["CHANNEL_OPTIONS", "Backoff", "TransportConfig"]

#: Options of every lane channel. Each lane gets its own subchannel pool, hence
#: its own TCP connection. Keepalive finds a peer that vanished without a RST
#: (otherwise a write could wait for the kernel's retransmission timeout); the
#: receiving server must allow these pings (see SERVER_OPTIONS).
CHANNEL_OPTIONS: tuple[tuple[str, int | str], ...] = (
    ("grpc.use_local_subchannel_pool", 1),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
)


@dataclass(frozen=True, slots=True)
class TransportConfig:
    """Knobs of the sender: queue capacities per lane, batch size, reconnect backoff."""

    heartbeat_queue: int = 512
    replication_queue: int = 1024
    snapshot_queue: int = 4
    other_queue: int = 16
    # Cap on one RaftStreamRequest (estimated). Under gRPC's default 4 MiB
    # receive limit even with one max-size (1 MiB) APP that did not fit.
    max_batch_bytes: int = 2 << 20
    backoff_initial: float = 0.05
    backoff_max: float = 2.0
    #: How long a new stream's first batch waits for the receiver to accept it
    #: (its initial metadata, which receivers send at once). Past it the batch is
    #: written anyway: a receiver of an older build sends no early metadata. Well
    #: under an election timeout (1 s by default), so that heartbeats to such a
    #: receiver are not held long enough to start an election.
    accept_timeout: float = 0.3
    channel_options: tuple[tuple[str, int | str], ...] = CHANNEL_OPTIONS

    def capacity(self, lane: Lane) -> int:
        return {
            Lane.HEARTBEAT: self.heartbeat_queue,
            Lane.REPLICATION: self.replication_queue,
            Lane.SNAPSHOT: self.snapshot_queue,
            Lane.OTHER: self.other_queue,
        }[lane]


class Backoff:
    """Capped exponential backoff with jitter, so peers that lost the same node
    do not reconnect in lockstep."""

    __slots__ = ("_cap", "_delay", "_initial", "_rng")

    def __init__(self, initial: float, cap: float, rng: random.Random) -> None:
        self._initial = initial
        self._cap = cap
        self._delay = initial
        self._rng = rng

    def next(self) -> float:
        delay = self._delay
        self._delay = min(self._cap, self._delay * 2)
        return delay * self._rng.uniform(0.5, 1.0)

    def reset(self) -> None:
        self._delay = self._initial
