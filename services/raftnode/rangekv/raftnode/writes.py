"""A range's writes on its leaseholder: merged into one raft command, under the scan fences.

Concurrent client batches queue their write operations on the range's raft
group (`RaftGroup.propose_part`); once per scheduler iteration, inside its
section, `RangeWrites.merge` turns every batch that may go into ONE raft
command (one entry, one fsync for all of them) and the group hands each
caller its slice of the applied results.

Scan fences (`rangekv.raftnode.fences`) decide two things here, in the
scheduler's section, so nothing can slip between the check and the proposal:
a batch touching a span whose fence is HELD stays queued, and the command's
version base lies above the read timestamp of every RELEASED fence covering
one of its keys. And every merged batch is tracked until it is applied, so a
fence hold (or a scan opening its fence) can wait for the writes already
proposed to its span (`await_inflight`): none of them may land at or below
the timestamp the range answers.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

from rangekv.common import errors as E
from rangekv.common.clock import Clock
from rangekv.common.hlc import HybridClock
from rangekv.raftnode.fences import ScanFences
from rangekv.raftnode.range_state import ts_to_proto
from rangekv.replication.mutations import Mutation
from rangekv.replication.proposals import Merge, QueuedPart
from rangekv.v1 import raftcmd_pb2, replica_pb2

__all__ = ["RangeWrites", "op_key"]

#: TEST MUTATION no_scan_fence: the fences writes see (none).
_NO_FENCES: Final = ScanFences()


def op_key(op: replica_pb2.ReplicaOp) -> bytes:
    """The key of a keyed operation (get, put, delete, compare_and_swap)."""
    key: bytes = getattr(op, op.WhichOneof("op")).key  # type: ignore[arg-type]
    return key


@dataclass(frozen=True, slots=True)
class _Inflight:
    """A merged batch's keys, and its future (done once applied here, or failed)."""

    future: asyncio.Future[Any]
    low: bytes
    high: bytes
    keys: frozenset[bytes]

    def overlaps(self, start: bytes, end: bytes) -> bool:
        if self.high < start or (end and self.low >= end):
            return False
        return any(start <= k and (not end or k < end) for k in self.keys)


class RangeWrites:
    """The `CommandMerger` of one range's raft group (see the module docstring)."""

    def __init__(
        self,
        range_id: int,
        fences: ScanFences,
        hlc: HybridClock,
        clock: Clock,
        *,
        mutation: Mutation = Mutation.NONE,
    ) -> None:
        self.range_id = range_id
        self.fences = fences
        self._hlc = hlc
        self._clock = clock
        self._mutation = mutation
        #: Batches merged into a proposal and not applied yet, by id.
        self._inflight: dict[int, _Inflight] = {}

    def merge(self, parts: Sequence[QueuedPart[replica_pb2.ReplicaOp]]) -> Merge[Any]:
        fences = self.fences
        if len(fences):
            fences.expire(self._clock.monotonic())  # a lapsed hold frees what it blocked
        if self._mutation is Mutation.NO_SCAN_FENCE:
            fences = _NO_FENCES  # TEST MUTATION: writes ignore every scan fence
        ready: list[QueuedPart[replica_pb2.ReplicaOp]] = []
        keys: list[bytes] = []
        for part in parts:
            part_keys = [op_key(op) for op in part.items]
            if fences.any_held and fences.blocks(part_keys):
                continue  # stays queued until the fence is released or lapses
            ready.append(part)
            keys.extend(part_keys)
        if not ready:
            return Merge(None)
        base = self._hlc.now()
        floor = fences.floor(keys)
        if floor >= base:
            base = floor.next()
            self._hlc.forward(base)
        cmd = raftcmd_pb2.RaftCommand(timestamp=ts_to_proto(base))
        for part in ready:
            cmd.writes.extend(part.items)
            if self._mutation is not Mutation.NO_SCAN_FENCE:
                self._track(part)
        return Merge(cmd.SerializeToString(), ready)

    def _track(self, part: QueuedPart[replica_pb2.ReplicaOp]) -> None:
        keys = [op_key(op) for op in part.items]
        key = id(part.future)
        self._inflight[key] = _Inflight(part.future, min(keys), max(keys), frozenset(keys))
        part.future.add_done_callback(functools.partial(self._landed, key))

    def _landed(self, key: int, _done: asyncio.Future[Any]) -> None:
        self._inflight.pop(key, None)

    async def await_inflight(self, start: bytes, end: bytes, timeout: float) -> None:
        """Wait until every write this leader proposed to [start, end) is applied (or
        failed): reads that follow must not miss a write that lands below them."""
        waiting = [w.future for w in self._inflight.values() if w.overlaps(start, end)]
        if not waiting:
            return
        _done, pending = await asyncio.wait(waiting, timeout=timeout)
        if pending:
            raise E.Unavailable(
                f"range {self.range_id}: writes proposed before this scan did not apply "
                f"within {timeout}s",
                retry_after=0.2,
            )
