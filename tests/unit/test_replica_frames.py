"""A node's BatchFrames answers: a busy stream's frame of read answers gathers, and a
frame holding an answer to a write never waits (`ReplicaService._serve_stream` with
`rangekv.common.frames`).

The service runs over stand-in replicas whose `batch` waits until the test lets
each request finish, so the test decides which answers are queued when the
stream's writer comes back for its next frame (it is "busy" when answers piled
up meanwhile)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

from rangekv.raftnode.service import ReplicaService
from rangekv.v1 import replica_pb2


class _HeldReplica:
    """Answers a batch when the test releases its request id."""

    def __init__(self) -> None:
        self.release: dict[int, asyncio.Event] = {}
        #: Ids answered. The service queues an answer in the same task step as the
        #: return from `batch` (no await between), so an id here is an answer queued.
        self.answered: set[int] = set()

    async def batch(self, request: replica_pb2.ReplicaBatchRequest) -> Any:
        rid = request.range_id  # the tests give each request its own range id
        await self.release.setdefault(rid, asyncio.Event()).wait()
        self.answered.add(rid)
        return replica_pb2.ReplicaBatchResponse()

    async def until_answered(self, rids: set[int]) -> None:
        """Yield to the loop until every request of `rids` is answered (bounded)."""
        for _ in range(1000):
            if rids <= self.answered:
                return
            await asyncio.sleep(0)
        raise AssertionError(f"requests {sorted(rids - self.answered)} never answered")


def _service(replica: _HeldReplica, gathered: list[int]) -> ReplicaService:
    store = SimpleNamespace(clock=None, replica=lambda _range_id: replica)
    splits = SimpleNamespace(txns=SimpleNamespace(pusher=SimpleNamespace(expiry=1.0)))
    return ReplicaService(
        store,  # type: ignore[arg-type]
        splits=splits,  # type: ignore[arg-type]
        changes=None,  # type: ignore[arg-type]
        frame_gather_turns=16,
        on_frame_gather=gathered.append,
    )


def _request(rid: int, *, write: bool) -> replica_pb2.BatchStreamRequest:
    op = (
        replica_pb2.ReplicaOp(put=replica_pb2.PutOp(key=b"k", value=b"v"))
        if write
        else replica_pb2.ReplicaOp(get=replica_pb2.GetOp(key=b"k"))
    )
    batch = replica_pb2.ReplicaBatchRequest(range_id=rid, ops=[op])
    return replica_pb2.BatchStreamRequest(request_id=rid, batch=batch)


async def _requests(reqs: list[replica_pb2.BatchStreamRequest]) -> AsyncIterator[Any]:
    for req in reqs:
        yield req
    await asyncio.Event().wait()  # the gateway keeps its stream open


async def _frames_after(
    replica: _HeldReplica, gathered: list[int], *, writes: bool
) -> tuple[list[int], list[int]]:
    """Request 1 is a read, answered alone; while the writer holds that frame, 2 and 3
    (writes if `writes`) finish; then the writer comes back for its next frame."""
    reqs = [_request(1, write=False), _request(2, write=writes), _request(3, write=writes)]
    stream = _service(replica, gathered)._serve_stream(_requests(reqs), framed=True)
    replica.release.setdefault(1, asyncio.Event()).set()
    first = await anext(stream)
    for rid in (2, 3):
        replica.release.setdefault(rid, asyncio.Event()).set()
    await replica.until_answered({2, 3})  # both answers queued while the writer was away
    second = await anext(stream)
    await stream.aclose()
    return [a.request_id for a in first], [a.request_id for a in second]


async def test_a_busy_streams_read_answers_gather() -> None:
    gathered: list[int] = []
    first, second = await _frames_after(_HeldReplica(), gathered, writes=False)
    assert (first, second) == ([1], [2, 3])
    assert gathered and gathered[0] >= 1


async def test_answers_to_writes_never_wait() -> None:
    gathered: list[int] = []
    first, second = await _frames_after(_HeldReplica(), gathered, writes=True)
    assert (first, second) == ([1], [2, 3])
    assert gathered == []
