"""Scans: one snapshot across ranges, read in pages.

A consistent scan of [start, end) in one line:

    pieces from the cache -> HOLD a fence on every piece (concurrently) -> T = max of
    the ranges' clocks -> RELEASE every fence at T (concurrently) -> read the pieces
    in key order at T under the fence, one page per node call

Why that is a snapshot, and why T needs no clock of ours, is argued in
`rangekv.raftnode.fences`: all fences are held at once at some instant P, every
range shows at T exactly its state at P, and every write acknowledged before the
scan began has a version <= T. The gateway's own clock is never read.

A scan whose span lies in one cached range skips the hold: its first page opens
the fence on the leaseholder at that replica's clock (one call, as cheap as a
plain read). If that range turns out to end before the span does (the cache was
stale), the scan starts over with fences.

Restarts. A fence dies with its lease (and with a split, a restart, a lapse): a
read under a lost fence answers FenceLost, and the scan starts over with a new
fence. Rows are buffered (up to `buffer_bytes`) before any is sent to the
caller, so a small scan restarts invisibly; once rows have left, a restart is
impossible and the caller gets ABORTED (FenceLost) with a retry hint -- never a
torn result.

Bounded: a page is at most `page_bytes` (and the node caps it again), the buffer
at most `buffer_bytes` plus one page, holds last at most `fence_hold` on the
nodes, and the number of pieces at most `max_pieces`.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Protocol

from rangekv.common import errors as E
from rangekv.common.clock import Clock, SystemClock
from rangekv.common.descriptors import RangeDescriptor
from rangekv.common.tasks import retrieve_outcome
from rangekv.domain.keys import min_end
from rangekv.gateway.node_client import BatchReply
from rangekv.v1 import replica_pb2, types_pb2

Chunk = tuple[list[types_pb2.KeyValue], types_pb2.Timestamp]


@dataclass(frozen=True, slots=True)
class ScanConfig:
    """How scans are paged, buffered and fenced."""

    #: Bytes of keys and values a node answers per page (it caps it again).
    page_bytes: int = 256 << 10
    #: Rows buffered before the first is sent, so that small scans restart invisibly.
    buffer_bytes: int = 1 << 20
    #: How long a node may block writes for this scan's fence before its release.
    fence_hold: float = 1.0
    #: Ranges one scan may fence.
    max_pieces: int = 10_000
    #: First pause before a restart; doubled per restart, capped at 0.5 s.
    restart_backoff: float = 0.01

    def __post_init__(self) -> None:
        if min(self.page_bytes, self.buffer_bytes, self.max_pieces) <= 0 or self.fence_hold <= 0:
            raise ValueError("scan settings must be positive")


class Sender(Protocol):
    """What a scan needs of the DistSender: route one op to the leaseholder."""

    async def send(
        self,
        key: bytes,
        op: replica_pb2.ReplicaOp,
        *,
        is_write: bool,
        inconsistent: bool = False,
        read_timestamp: types_pb2.Timestamp | None = None,
        timeout: float | None = None,
        fence_id: bytes = b"",
    ) -> BatchReply: ...


class Pieces(Protocol):
    """Where the ranges of a span are believed to be: the descriptor cache."""

    async def lookup(self, key: bytes) -> RangeDescriptor: ...


@dataclass(frozen=True, slots=True)
class _Piece:
    start: bytes
    end: bytes  # exclusive; b"" = unbounded


class ScanStats:
    """Counters telemetry reads: scans, restarts by reason, fenced ranges."""

    def __init__(self) -> None:
        self.scans = 0
        self.restarts: dict[str, int] = {}
        self.fenced_ranges = 0
        self.aborted = 0

    def restart(self, reason: str) -> None:
        self.restarts[reason] = self.restarts.get(reason, 0) + 1


class Scanner:
    """Runs consistent (and inconsistent) scans through a Sender."""

    def __init__(
        self,
        sender: Sender,
        pieces: Pieces,
        config: ScanConfig | None = None,
        *,
        rng: random.Random | None = None,
        clock: Clock | None = None,
    ) -> None:
        self._sender = sender
        self._pieces = pieces
        self.config = config or ScanConfig()
        self._rng = rng if rng is not None else random.Random()
        self._clock: Clock = clock if clock is not None else SystemClock()
        self.stats = ScanStats()

    async def scan(
        self, start: bytes, end: bytes, limit: int, *, inconsistent: bool, timeout: float
    ) -> AsyncIterator[Chunk]:
        """Yield (rows, read timestamp) chunks of [start, end) in key order."""
        self.stats.scans += 1
        deadline = self._clock.monotonic() + timeout
        if inconsistent:
            async for chunk in self._inconsistent(start, end, limit, deadline):
                yield chunk
            return
        backoff = self.config.restart_backoff
        fenced = False  # the first attempt may use the one-range path
        while True:
            buffered: list[Chunk] = []
            size = 0
            sent = False
            try:
                async for chunk in self._snapshot(start, end, limit, deadline, fenced):
                    if sent:
                        yield chunk
                        continue
                    buffered.append(chunk)
                    size += sum(len(kv.key) + len(kv.value) for kv in chunk[0])
                    if size >= self.config.buffer_bytes:
                        sent = True
                        for held in buffered:
                            yield held
                        buffered = []
                for held in buffered:
                    yield held
                return
            except (E.FenceLost, E.ClockOffset) as err:
                if sent:
                    self.stats.aborted += 1
                    raise E.FenceLost(
                        err.fence_id if isinstance(err, E.FenceLost) else b"",
                        f"{_reason(err)}, after rows of this scan were already sent",
                        retry_after=0.05,
                    ) from None
                self.stats.restart("fence_lost" if isinstance(err, E.FenceLost) else "clock_offset")
                left = deadline - self._clock.monotonic()
                if left <= 0:
                    raise E.Unavailable(
                        f"could not read a consistent snapshot before the deadline: {_reason(err)}",
                        retry_after=0.5,
                    ) from None
                fenced = True
                await self._clock.sleep(min(left, backoff * (0.5 + self._rng.random())))
                backoff = min(backoff * 2, 0.5)

    # --- one attempt -----------------------------------------------------------------

    async def _snapshot(
        self, start: bytes, end: bytes, limit: int, deadline: float, fenced: bool
    ) -> AsyncIterator[Chunk]:
        fence_id = self._rng.randbytes(16)
        pieces = await self._plan(start, end, deadline)
        read_ts: types_pb2.Timestamp | None = None
        if len(pieces) > 1 or fenced:
            pieces, read_ts = await self._hold_all(pieces, fence_id, deadline)
            await self._release_all(pieces, fence_id, read_ts, deadline)
        remaining = limit
        for piece in pieces:
            cursor = piece.start
            while True:
                op = replica_pb2.ReplicaOp(
                    scan=replica_pb2.ScanOp(
                        start_key=cursor,
                        end_key=piece.end,
                        limit=remaining,
                        max_bytes=self.config.page_bytes,
                    )
                )
                reply = await self._sender.send(
                    cursor,
                    op,
                    is_write=False,
                    read_timestamp=read_ts,
                    timeout=self._left(deadline),
                    fence_id=fence_id,
                )
                if read_ts is None:
                    read_ts = reply.read_timestamp  # the one-range path opened the fence
                result = reply.results[0].scan
                kvs = list(result.kvs)
                if kvs:
                    yield kvs, read_ts
                if limit:
                    remaining -= len(kvs)
                    if remaining <= 0:
                        return
                if result.resume_key:
                    cursor = result.resume_key
                    continue
                used = RangeDescriptor.from_proto(reply.descriptor)
                if used.end_key and (not piece.end or used.end_key < piece.end):
                    # The range ends inside the piece (it split, or the cache was
                    # stale): the rest of the piece is under no fence of this scan.
                    raise E.FenceLost(fence_id, "range_changed: a range ended inside the scan")
                break

    async def _plan(self, start: bytes, end: bytes, deadline: float) -> list[_Piece]:
        """The span cut where the cache believes ranges end."""
        pieces: list[_Piece] = []
        key = start
        while True:
            desc = await self._lookup(key, deadline)
            piece_end = min_end(end, desc.end_key)
            pieces.append(_Piece(key, piece_end))
            if not desc.end_key or (end and desc.end_key >= end):
                return pieces
            if len(pieces) >= self.config.max_pieces:
                raise E.InvalidArgument(
                    "end_key", f"the span covers more than {self.config.max_pieces} ranges"
                )
            key = desc.end_key

    async def _lookup(self, key: bytes, deadline: float) -> RangeDescriptor:
        backoff = 0.02
        while True:
            try:
                return await self._pieces.lookup(key)
            except E.Unavailable:
                left = deadline - self._clock.monotonic()
                if left <= 0:
                    raise
                await self._clock.sleep(min(left, backoff))
                backoff = min(backoff * 2, 0.5)

    async def _hold_all(
        self, pieces: list[_Piece], fence_id: bytes, deadline: float
    ) -> tuple[list[_Piece], types_pb2.Timestamp]:
        """Hold a fence on every piece; fill the gaps a stale cache left. Returns the
        fenced pieces (in key order, covering the span) and T = max of their clocks."""
        hold_deadline = min(deadline, self._clock.monotonic() + self.config.fence_hold)
        fenced: list[tuple[_Piece, types_pb2.Timestamp]] = []
        todo = pieces
        while todo:
            answers = await asyncio.gather(
                *(self._fence(p, fence_id, None, hold_deadline) for p in todo),
                return_exceptions=True,
            )
            failure = next((a for a in answers if isinstance(a, BaseException)), None)
            for a in answers:
                if not isinstance(a, BaseException):
                    fenced.append(a)
            if failure is not None:
                self._let_go(fenced, fence_id)
                if isinstance(failure, E.RangeKVError):
                    if isinstance(failure, E.DeadlineExceeded | E.Unavailable):
                        raise E.FenceLost(fence_id, f"hold_failed: {failure.message}")
                    raise failure
                raise failure
            todo = _gaps([p for p, _ts in fenced], pieces[0].start, pieces[-1].end)
            if len(fenced) + len(todo) > self.config.max_pieces:
                self._let_go(fenced, fence_id)
                raise E.InvalidArgument(
                    "end_key", f"the span covers more than {self.config.max_pieces} ranges"
                )
        self.stats.fenced_ranges += len(fenced)
        top = max((ts for _p, ts in fenced), key=lambda t: (t.wall_time, t.logical))
        ordered = sorted((p for p, _ts in fenced), key=lambda p: p.start)
        return ordered, types_pb2.Timestamp(wall_time=top.wall_time, logical=top.logical)

    async def _release_all(
        self, pieces: list[_Piece], fence_id: bytes, read_ts: types_pb2.Timestamp, deadline: float
    ) -> None:
        answers = await asyncio.gather(
            *(self._fence(p, fence_id, read_ts, deadline) for p in pieces),
            return_exceptions=True,
        )
        for a in answers:
            if isinstance(a, BaseException):
                if isinstance(a, E.Unavailable | E.DeadlineExceeded):
                    raise E.FenceLost(fence_id, f"release_failed: {a.message}")
                raise a

    async def _fence(
        self,
        piece: _Piece,
        fence_id: bytes,
        release_at: types_pb2.Timestamp | None,
        deadline: float,
    ) -> tuple[_Piece, types_pb2.Timestamp]:
        op = replica_pb2.ReplicaOp(
            fence=replica_pb2.FenceOp(
                start_key=piece.start,
                end_key=piece.end,
                fence_id=fence_id,
                hold_millis=int(self.config.fence_hold * 1000),
            )
        )
        reply = await self._sender.send(
            piece.start,
            op,
            is_write=False,
            read_timestamp=release_at,
            timeout=self._left(deadline),
        )
        result = reply.results[0].fence
        return _Piece(result.start_key, result.end_key), result.timestamp

    def _let_go(self, fenced: list[tuple[_Piece, types_pb2.Timestamp]], fence_id: bytes) -> None:
        """A failed hold: release what was held (each at its own clock) so writers
        blocked by it go on now, not when the holds lapse. Best effort."""
        for piece, ts in fenced:
            task = asyncio.ensure_future(
                self._fence(piece, fence_id, ts, self._clock.monotonic() + self.config.fence_hold)
            )
            task.add_done_callback(retrieve_outcome)

    def _left(self, deadline: float) -> float:
        left = deadline - self._clock.monotonic()
        if left <= 0:
            raise E.DeadlineExceeded("the scan's deadline passed")
        return left

    # --- inconsistent scans ----------------------------------------------------------

    async def _inconsistent(
        self, start: bytes, end: bytes, limit: int, deadline: float
    ) -> AsyncIterator[Chunk]:
        """Any replica, each range at its own time: possibly stale, never torn per page."""
        cursor = start
        remaining = limit
        while True:
            op = replica_pb2.ReplicaOp(
                scan=replica_pb2.ScanOp(
                    start_key=cursor, end_key=end, limit=remaining, max_bytes=self.config.page_bytes
                )
            )
            reply = await self._sender.send(
                cursor, op, is_write=False, inconsistent=True, timeout=self._left(deadline)
            )
            result = reply.results[0].scan
            kvs = list(result.kvs)
            if kvs:
                yield kvs, reply.read_timestamp
            if limit:
                remaining -= len(kvs)
                if remaining <= 0:
                    return
            if result.resume_key:
                cursor = result.resume_key
                continue
            used = RangeDescriptor.from_proto(reply.descriptor)
            if not used.end_key or (end and used.end_key >= end):
                return
            cursor = used.end_key


def _gaps(covered: list[_Piece], start: bytes, end: bytes) -> list[_Piece]:
    """The parts of [start, end) no piece of `covered` covers, in key order."""
    gaps: list[_Piece] = []
    cursor = start
    for piece in sorted(covered, key=lambda p: p.start):
        if piece.start > cursor:
            gaps.append(_Piece(cursor, piece.start))
        if not piece.end:
            return gaps
        cursor = max(cursor, piece.end)
        if end and cursor >= end:
            return gaps
    if not end or cursor < end:
        gaps.append(_Piece(cursor, end))
    return gaps


def _reason(err: E.RangeKVError) -> str:
    return err.reason if isinstance(err, E.FenceLost) else err.message
