"""State checksums: do the replicas of a raft group hold the same state?

Raft promises that every replica applies the same commands in the same order,
so two replicas of a group that report the same applied index must hold the
same state, byte for byte. Nothing a client sees checks this: reads go to the
leaseholder, so a follower that lost or skipped an effect (an unsynced write
lost in a power cut and never replayed, a log truncated past what the state
engine held, a snapshot ingested over newer state, a flipped bit on disk)
looks healthy until the lease moves to it, and then serves the hole as data.

`state_checksum` is the check's one primitive. It reads ONE engine snapshot:

- the group's applied state, written in the same batch as every command's
  effects, so the index it names is exactly the state the snapshot holds (the
  group's in-memory applied index may already be past it, or behind it while a
  worker thread commits);
- every key a raft snapshot of the group would ship (its state machine's
  spans, given by the caller from the same view: a range's spans depend on its
  descriptor), in key order, each length-prefixed.

Invariant: two replicas of a group whose checksums name the same applied
index have the same digest. The storage nodes answer with one per replica
(`RangeInfo` with `checksums`), the meta range's replicas with theirs
(`ClusterInfo` with `checksum`); both read every key of the group in a worker
thread, so they are asked for by tests and operators, not polled, and one
request computes at most MAX_CHECKSUMS_PER_REQUEST (a range's size is bounded
by the split threshold, so that bounds one request's work). `checksum_off_loop`
runs the reads in a worker thread; an engine closed under it (the process is
stopping) is UNAVAILABLE, not an internal error. `ChecksumLedger` compares
what replicas reported.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Final, TypeVar

from rangekv.common import errors as E
from rangekv.replication.rocks import CLOSED_ERRORS
from rangekv.replication.state_engine import Reader, StateEngine, StateEngineClosedError
from rangekv.replication.state_machine import Span
from rangekv.v1 import types_pb2

__all__ = [
    "MAX_CHECKSUMS_PER_REQUEST",
    "ChecksumLedger",
    "StateChecksum",
    "checksum_off_loop",
    "state_checksum",
]

_LEN = 4  # bytes of each length prefix
#: Replicas one request may ask the checksums of (each reads its whole range).
MAX_CHECKSUMS_PER_REQUEST: Final = 64

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class StateChecksum:
    """A digest of one replica's state and the applied index it was taken at."""

    applied_index: int
    digest: str  # hex, 32 characters (128 bits of SHA-256)

    def to_proto(self) -> types_pb2.StateChecksum:
        return types_pb2.StateChecksum(applied_index=self.applied_index, digest=self.digest)


def state_checksum(
    engine: StateEngine, group_id: int, spans_of: Callable[[Reader], Sequence[Span] | None]
) -> StateChecksum | None:
    """The checksum of group `group_id` as `engine` holds it now, over the spans
    `spans_of` finds in the same view; None when the engine holds no applied state
    of the group or `spans_of` answers None (a replica not initialized yet).

    Blocking (reads every key of the group): call it from a worker thread."""
    with engine.snapshot() as snap:
        applied = engine.applied_state(group_id, snap)
        spans = spans_of(snap)
        if applied is None or spans is None:
            return None
        h = hashlib.sha256()
        for lo, hi in spans:
            for key, value in snap.iterate(lo, hi):
                h.update(len(key).to_bytes(_LEN, "big"))
                h.update(key)
                h.update(len(value).to_bytes(_LEN, "big"))
                h.update(value)
        return StateChecksum(applied.index, h.hexdigest()[:32])


async def checksum_off_loop(compute: Callable[[], T]) -> T:
    """`compute` (engine reads: `state_checksum` calls) in a worker thread. An
    engine closed meanwhile (before the reads began, or under them) means the
    process is stopping: UNAVAILABLE, so the caller asks again elsewhere or
    later, rather than an internal error."""
    try:
        return await asyncio.to_thread(compute)
    except (StateEngineClosedError, *CLOSED_ERRORS) as exc:
        raise E.Unavailable(f"the node is stopping (its state engine closed): {exc}") from exc


@dataclass
class ChecksumLedger:
    """What replicas of some groups reported, filed by (group, applied index).

    Replicas rarely stand at one index at the same moment while a group takes
    writes, so reports accumulate across polls: two different digests filed
    under one (group, index) are a divergence, whenever they were taken."""

    _seen: dict[tuple[int, int], dict[int, str]] = field(default_factory=dict)

    def record(self, group_id: int, replica: int, checksum: types_pb2.StateChecksum) -> None:
        """`replica` (a node id, or any name of the replica) reported `checksum`."""
        self._seen.setdefault((group_id, checksum.applied_index), {})[replica] = checksum.digest

    def compared(self, group_id: int, replicas: Sequence[int]) -> bool:
        """Whether every one of `replicas` reported at one common applied index."""
        want = set(replicas)
        return bool(want) and any(
            gid == group_id and want <= set(by_replica)
            for (gid, _), by_replica in self._seen.items()
        )

    def comparisons(self) -> int:
        """(group, index) pairs at which two replicas or more reported."""
        return sum(1 for by_replica in self._seen.values() if len(by_replica) > 1)

    def divergences(self, group: str = "group") -> list[str]:
        """One line per (group, index) whose replicas disagree, naming who holds what
        (`group`: what to call a group, e.g. "range")."""
        out = []
        for (group_id, index), by_replica in sorted(self._seen.items()):
            holders: dict[str, list[int]] = {}
            for replica, digest in sorted(by_replica.items()):
                holders.setdefault(digest, []).append(replica)
            if len(holders) > 1:
                views = "; ".join(
                    f"node(s) {', '.join(map(str, who))} hold {digest[:12]}"
                    for digest, who in holders.items()
                )
                out.append(f"{group} {group_id} at applied index {index}: {views}")
        return out
