"""HybridClock and Timestamp: ordering, encoding, monotonicity, offset rejection."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rangekv.common.hlc import (
    ClockOffsetError,
    HybridClock,
    LogicalOverflowError,
    Timestamp,
    TimestampDecodeError,
)

timestamps = st.builds(Timestamp, st.integers(0, (1 << 64) - 1), st.integers(0, (1 << 32) - 1))


class FakePhysical:
    """A settable physical clock (nanoseconds)."""

    def __init__(self, now: int) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now


@given(timestamps, timestamps)
def test_encoding_sorts_like_timestamps(a: Timestamp, b: Timestamp) -> None:
    assert (a < b) == (a.encode() < b.encode())
    assert (a == b) == (a.encode() == b.encode())


@given(timestamps)
def test_encode_roundtrip_is_12_bytes(ts: Timestamp) -> None:
    raw = ts.encode()
    assert len(raw) == 12
    assert Timestamp.decode(raw) == ts


def test_decode_rejects_wrong_length() -> None:
    with pytest.raises(TimestampDecodeError):
        Timestamp.decode(b"\x00" * 11)


def test_rejects_out_of_range_fields() -> None:
    with pytest.raises(ValueError):
        Timestamp(-1, 0)
    with pytest.raises(ValueError):
        Timestamp(0, 1 << 32)


def test_next_is_strictly_greater() -> None:
    assert Timestamp(5, 3).next() == Timestamp(5, 4)
    assert Timestamp(5, (1 << 32) - 1).next() == Timestamp(6, 0)


def test_now_follows_physical_clock_and_ticks_logical_when_stalled() -> None:
    phys = FakePhysical(100)
    clock = HybridClock(phys, max_offset_ns=50)
    assert clock.now() == Timestamp(100, 0)
    assert clock.now() == Timestamp(100, 1)
    phys.now = 200
    assert clock.now() == Timestamp(200, 0)


def test_now_never_goes_backwards_when_physical_clock_does() -> None:
    phys = FakePhysical(1_000)
    clock = HybridClock(phys, max_offset_ns=50)
    first = clock.now()
    phys.now = 10  # wall clock jumped back
    second = clock.now()
    assert second > first
    assert second == Timestamp(1_000, 1)


@given(st.lists(st.one_of(st.integers(0, 10_000), timestamps.map(lambda t: t)), max_size=60))
def test_monotonic_over_arbitrary_physical_and_remote_sequences(
    ops: list[int | Timestamp],
) -> None:
    phys = FakePhysical(5_000)
    clock = HybridClock(phys, max_offset_ns=1_000)
    last = clock.now()
    for op in ops:
        if isinstance(op, int):
            phys.now = op
            try:
                ts = clock.now()
            except LogicalOverflowError:
                # A peer's timestamp took the logical counter to its top, and this
                # physical clock has not moved past that wall time (a real one would
                # within a nanosecond): refused, never wrapped.
                assert last.logical == (1 << 32) - 1 and phys.now <= last.wall_time
                continue
        else:
            try:
                ts = clock.update(op)
            except ClockOffsetError:
                assert op.wall_time - phys.now > 1_000
                continue
            except LogicalOverflowError:
                continue
            assert ts > op
        assert ts > last
        last = ts


def test_update_absorbs_remote_ahead_within_offset() -> None:
    phys = FakePhysical(1_000)
    clock = HybridClock(phys, max_offset_ns=100)
    ts = clock.update(Timestamp(1_050, 7))
    assert ts == Timestamp(1_050, 8)
    assert clock.now() == Timestamp(1_050, 9)


def test_update_with_remote_behind_keeps_local() -> None:
    phys = FakePhysical(1_000)
    clock = HybridClock(phys, max_offset_ns=100)
    clock.now()
    assert clock.update(Timestamp(10, 99)) == Timestamp(1_000, 1)


def test_update_same_wall_takes_max_logical_plus_one() -> None:
    phys = FakePhysical(1_000)
    clock = HybridClock(phys, max_offset_ns=100)
    clock.now()
    clock.now()  # (1000, 1)
    assert clock.update(Timestamp(1_000, 5)) == Timestamp(1_000, 6)


def test_update_rejects_remote_beyond_max_offset_and_keeps_state() -> None:
    phys = FakePhysical(1_000)
    clock = HybridClock(phys, max_offset_ns=100)
    before = clock.now()
    remote = Timestamp(1_101, 0)
    with pytest.raises(ClockOffsetError) as info:
        clock.update(remote)
    err = info.value
    assert err.remote == remote
    assert err.offset_ns == 101
    assert err.max_offset_ns == 100
    assert err.local_physical_ns == 1_000
    assert clock.last() == before
    # exactly at the bound is accepted
    assert clock.update(Timestamp(1_100, 0)) == Timestamp(1_100, 1)


def test_logical_overflow_is_an_error_not_a_wrap() -> None:
    phys = FakePhysical(0)
    clock = HybridClock(phys, max_offset_ns=10)
    clock.update(Timestamp(0, (1 << 32) - 2))
    with pytest.raises(LogicalOverflowError):
        clock.now()


def test_negative_offset_rejected() -> None:
    with pytest.raises(ValueError):
        HybridClock(lambda: 0, max_offset_ns=-1)
