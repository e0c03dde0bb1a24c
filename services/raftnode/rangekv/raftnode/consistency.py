"""Replica checksums: do the replicas of a range hold the same state?

Raft promises that every replica applies the same commands in the same order,
so two replicas of a range that report the same applied index must hold the
same range state, byte for byte. Nothing in a client's view checks this: reads
go to the leaseholder, so a follower that lost or skipped an effect (an unsynced
write lost in a power cut and never replayed, a log truncated past what the
state engine held, a snapshot ingested over newer state) looks healthy until the
lease moves to it, and then serves the hole as if it were the data.

`replica_checksum` is the check's one primitive. It reads ONE engine snapshot:

- the range's applied state, written in the same batch as every command's
  effects, so the index it names is exactly the state the snapshot holds (the
  replica's in-memory applied index may already be past it, or behind it while
  a worker thread commits);
- every key a raft snapshot of the range would ship (`range_spans`: the
  range-local keys, including the applied state and the descriptor, the
  transaction records and the MVCC data), in key order, each length-prefixed.

Invariant: two replicas of a range whose checksums name the same applied index
have the same digest. `RangeInfo` with `checksums` set returns one per replica
(it reads every key of the replica, in a worker thread: ask for the ranges you
want to check, not on a poll); the test kit's `Replicas.diverged` compares them
across nodes, and the chaos suite asks it after every run.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from rangekv.common.descriptors import RangeDescriptor
from rangekv.raftnode.range_state import range_spans
from rangekv.replication.state_engine import DESCRIPTOR, StateEngine, range_local_key
from rangekv.v1 import replica_pb2, types_pb2

__all__ = ["ReplicaChecksum", "replica_checksum"]

_LEN = 4  # bytes of each length prefix


@dataclass(frozen=True, slots=True)
class ReplicaChecksum:
    """A digest of one replica's state and the applied index it was taken at."""

    applied_index: int
    digest: str  # hex, 32 characters (128 bits of SHA-256)

    def to_proto(self) -> replica_pb2.StateChecksum:
        return replica_pb2.StateChecksum(applied_index=self.applied_index, digest=self.digest)


def replica_checksum(engine: StateEngine, range_id: int) -> ReplicaChecksum | None:
    """The checksum of range `range_id` as `engine` holds it now; None when the engine
    holds no initialized replica of it (no applied state or no descriptor: a replica
    created by a peer's message, waiting for its split or snapshot).

    Blocking (reads every key of the range): call it from a worker thread."""
    with engine.snapshot() as snap:
        applied = engine.applied_state(range_id, snap)
        raw = snap.get(range_local_key(range_id, DESCRIPTOR))
        if applied is None or raw is None:
            return None
        desc = RangeDescriptor.from_proto(types_pb2.RangeDescriptor.FromString(raw))
        h = hashlib.sha256()
        for lo, hi in range_spans(range_id, desc):
            for key, value in snap.iterate(lo, hi):
                h.update(len(key).to_bytes(_LEN, "big"))
                h.update(key)
                h.update(len(value).to_bytes(_LEN, "big"))
                h.update(value)
        return ReplicaChecksum(applied.index, h.hexdigest()[:32])
