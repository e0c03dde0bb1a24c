"""Replica checksums of a storage node's ranges (`rangekv.replication.checksum`).

A range's checksum covers what a raft snapshot of it would carry
(`range_spans`): its range-local keys (the applied state, the descriptor, the
GC threshold), its transaction records and its MVCC data. The spans come from
the descriptor stored in the same engine view, so a split applied between two
reads can never mix two layouts. `RangeInfo` with `checksums` set answers one
per replica; the test kit's `Replicas.diverged` compares them across nodes,
and the chaos suite asks it after every run.
"""

from __future__ import annotations

from rangekv.common.descriptors import RangeDescriptor
from rangekv.raftnode.range_state import range_spans
from rangekv.replication.checksum import StateChecksum, state_checksum
from rangekv.replication.state_engine import DESCRIPTOR, Reader, StateEngine, range_local_key
from rangekv.replication.state_machine import Span
from rangekv.v1 import types_pb2

__all__ = ["replica_checksum"]


def replica_checksum(engine: StateEngine, range_id: int) -> StateChecksum | None:
    """The checksum of range `range_id` as `engine` holds it now; None when the engine
    holds no initialized replica of it (a replica created by a peer's message,
    waiting for its split or snapshot, has no descriptor or applied state yet).

    Blocking (reads every key of the range): call it from a worker thread."""

    def spans(view: Reader) -> list[Span] | None:
        raw = view.get(range_local_key(range_id, DESCRIPTOR))
        if raw is None:
            return None
        desc = RangeDescriptor.from_proto(types_pb2.RangeDescriptor.FromString(raw))
        return range_spans(range_id, desc)

    return state_checksum(engine, range_id, spans)
