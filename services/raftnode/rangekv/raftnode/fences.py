"""Scan fences: what makes a multi-range scan one snapshot (and what a write must respect).

Why fences. Every range stamps its writes from its own leaseholder's clock, and
clocks differ by up to the maximum offset. A scan that reads range A at T and
then range B at T can therefore hold a write on B that began after a write on
A finished, without the write on A: B's clock was behind (A's write got a
version above T, B's a version below). No choice of T fixes that, and neither
do uncertainty intervals (a chain of writes can step back by the offset at
every hop). What fixes it is making the ranges stop at ONE instant:

    hold    the gateway asks every range of the span, concurrently, to hold a
            fence over its part of the span: the leaseholder blocks new writes
            there, waits for the writes already proposed there to apply, and
            answers its clock t_R (>= the version of every write it applied);
    release the gateway takes T = max t_R and releases every fence at T: writes
            to the span resume, each versioned above T;
    read    the gateway reads every range at T under its fence, page by page.

Invariant (the snapshot): while a range's fence is HELD, no write to its part of
the span is proposed; once RELEASED at T, every write proposed there gets a
version above T. All fences are held at once at some instant P (after the last
hold answered, before the first release), so what a range shows at T is exactly
its state at P: a scan is linearizable at P, which lies inside the scan. Every
write acknowledged before the scan began is applied on its leaseholder before
that range's hold, so its version is <= t_R <= T: the scan sees it, whatever
any gateway's clock says.

A fence lives in the memory of the leaseholder that granted it and dies with its
lease (`clear` on every leadership change), when it expires, or when its last
page was read. A read under a fence this replica does not hold is refused
(`FenceLost`): the gateway starts the scan over. So a lease transfer, a restart
or a split during a scan costs a restart, never a torn snapshot.

Bounded: at most `max_fences` per replica (beyond: ResourceExhausted), a HELD
fence blocks writes for at most its hold time, a RELEASED one lives `ttl`
seconds after its last use. Lapsed fences are forgotten whenever the range's
queued writes are merged (`expire`, in every raft iteration that wakes the
range) and when a new fence finds the limit reached, so a fence that lapsed
since the range last woke never makes a scan wait.

Pure logic: the caller passes `now` (monotonic seconds).
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass, replace

from rangekv.common import errors as E
from rangekv.common.hlc import Timestamp


class FenceState(enum.Enum):
    HELD = "held"
    RELEASED = "released"


@dataclass(frozen=True, slots=True)
class Fence:
    """One scan's fence on one range: the span it covers and what it promises."""

    fence_id: bytes
    start: bytes
    end: bytes  # exclusive; b"" = unbounded
    state: FenceState
    #: HELD: when the hold lapses. RELEASED: when the fence is forgotten unless used.
    expires_at: float
    #: RELEASED: the scan's read timestamp; writes to the span go above it.
    read_ts: Timestamp = Timestamp.MIN

    def covers(self, key: bytes) -> bool:
        return self.start <= key and (not self.end or key < self.end)

    def contains_span(self, start: bytes, end: bytes) -> bool:
        """Whether [start, end) lies inside the fence (b"" end = unbounded)."""
        if start < self.start:
            return False
        if not self.end:
            return True
        return bool(end) and end <= self.end


@dataclass(frozen=True, slots=True)
class FenceLimits:
    max_fences: int = 1024
    #: Longest time a fence may block writes before its release.
    max_hold: float = 2.0
    #: How long a released fence outlives its last read.
    ttl: float = 10.0

    def __post_init__(self) -> None:
        if self.max_fences <= 0 or self.max_hold <= 0 or self.ttl <= 0:
            raise ValueError("fence limits must be positive")


class ScanFences:
    """The fences of one replica (see the module docstring for the invariant)."""

    def __init__(self, limits: FenceLimits | None = None) -> None:
        self.limits = limits or FenceLimits()
        self._fences: dict[bytes, Fence] = {}
        #: Cheap checks on the write path: how many fences are HELD.
        self._held = 0

    def __len__(self) -> int:
        return len(self._fences)

    def __contains__(self, fence_id: bytes) -> bool:
        return fence_id in self._fences

    @property
    def any_held(self) -> bool:
        return self._held > 0

    def _admit(self, fence_id: bytes, now: float) -> None:
        if fence_id in self._fences or len(self._fences) < self.limits.max_fences:
            return
        self.expire(now)  # some may have lapsed since the range last woke
        if len(self._fences) >= self.limits.max_fences:
            raise E.ResourceExhausted(
                f"{len(self._fences)} scan fences are open on this range; retry the scan",
                retry_after=0.1,
            )

    def _put(self, fence: Fence) -> Fence:
        old = self._fences.get(fence.fence_id)
        if old is not None and old.state is FenceState.HELD:
            self._held -= 1
        if fence.state is FenceState.HELD:
            self._held += 1
        self._fences[fence.fence_id] = fence
        return fence

    def _drop(self, fence_id: bytes) -> Fence | None:
        fence = self._fences.pop(fence_id, None)
        if fence is not None and fence.state is FenceState.HELD:
            self._held -= 1
        return fence

    # --- the scan's steps ------------------------------------------------------------

    def hold(self, fence_id: bytes, start: bytes, end: bytes, hold: float, now: float) -> Fence:
        """HOLD a fence over [start, end) (idempotent for a fence already held)."""
        existing = self._fences.get(fence_id)
        if existing is not None:
            if existing.state is FenceState.HELD and (existing.start, existing.end) == (start, end):
                return existing
            raise E.FenceLost(fence_id, "the fence was already used differently")
        self._admit(fence_id, now)
        until = now + min(max(hold, 0.0), self.limits.max_hold)
        return self._put(Fence(fence_id, start, end, FenceState.HELD, until))

    def release(self, fence_id: bytes, read_ts: Timestamp, now: float) -> Fence:
        """RELEASE a held fence at `read_ts` (idempotent for the same timestamp)."""
        fence = self._live(fence_id, now)
        if fence.state is FenceState.RELEASED:
            if fence.read_ts != read_ts:
                raise E.FenceLost(fence_id, "released at another timestamp")
            return self._touch(fence, now)
        released = replace(
            fence, state=FenceState.RELEASED, read_ts=read_ts, expires_at=now + self.limits.ttl
        )
        return self._put(released)

    def open(
        self, fence_id: bytes, start: bytes, end: bytes, read_ts: Timestamp, now: float
    ) -> Fence:
        """A fence RELEASED at once (a scan of one range: the hold is instantaneous)."""
        if fence_id in self._fences:
            raise E.FenceLost(fence_id, "the fence is already open")
        self._admit(fence_id, now)
        fence = Fence(fence_id, start, end, FenceState.RELEASED, now + self.limits.ttl, read_ts)
        return self._put(fence)

    def check_read(
        self, fence_id: bytes, read_ts: Timestamp, start: bytes, end: bytes, now: float
    ) -> Fence:
        """The fence a read at `read_ts` over [start, end) is served under."""
        fence = self._live(fence_id, now)
        if fence.state is not FenceState.RELEASED or fence.read_ts != read_ts:
            raise E.FenceLost(fence_id, "the fence was not released at this timestamp")
        if not fence.contains_span(start, end):
            raise E.FenceLost(fence_id, "the read is outside the fenced span")
        return self._touch(fence, now)

    def get(self, fence_id: bytes) -> Fence | None:
        return self._fences.get(fence_id)

    def done(self, fence_id: bytes) -> None:
        """The scan read the last page under this fence."""
        self._drop(fence_id)

    def _live(self, fence_id: bytes, now: float) -> Fence:
        fence = self._fences.get(fence_id)
        if fence is None:
            raise E.FenceLost(fence_id, "this leaseholder holds no such fence")
        if fence.expires_at <= now:
            self._drop(fence_id)
            raise E.FenceLost(fence_id, "the fence expired")
        return fence

    def _touch(self, fence: Fence, now: float) -> Fence:
        return self._put(replace(fence, expires_at=now + self.limits.ttl))

    # --- what writes must respect --------------------------------------------------

    def blocks(self, keys: Iterable[bytes]) -> bool:
        """Whether a HELD fence covers one of `keys` (such a write must wait)."""
        if not self._held:
            return False
        held = [f for f in self._fences.values() if f.state is FenceState.HELD]
        return any(f.covers(k) for k in keys for f in held)

    def floor(self, keys: Iterable[bytes]) -> Timestamp:
        """The highest read timestamp of a RELEASED fence covering one of `keys`:
        a write to them must get a version above it (Timestamp.MIN: no constraint)."""
        top = Timestamp.MIN
        released = [f for f in self._fences.values() if f.state is FenceState.RELEASED]
        if not released:
            return top
        for key in keys:
            for fence in released:
                if fence.read_ts > top and fence.covers(key):
                    top = fence.read_ts
        return top

    def expire(self, now: float) -> bool:
        """Forget lapsed fences; True when a HELD one lapsed (blocked writes may go)."""
        lapsed = [f for f in self._fences.values() if f.expires_at <= now]
        unblocked = False
        for fence in lapsed:
            unblocked = unblocked or fence.state is FenceState.HELD
            self._drop(fence.fence_id)
        return unblocked

    def next_expiry(self) -> float | None:
        """When the next HELD fence lapses (None: none is held)."""
        held = [f.expires_at for f in self._fences.values() if f.state is FenceState.HELD]
        return min(held) if held else None

    def clear(self) -> None:
        """The lease is gone: every fence with it."""
        self._fences.clear()
        self._held = 0
