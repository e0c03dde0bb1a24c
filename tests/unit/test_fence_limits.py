"""ScanFences' bound (rangekv.raftnode.fences): at most `max_fences`, and lapsed
fences never count against a new one, even when the range has not woken since
they lapsed (waking is what else forgets them: the write merge expires them)."""

from __future__ import annotations

import pytest

from rangekv.common import errors as E
from rangekv.common.hlc import Timestamp
from rangekv.raftnode.fences import FenceLimits, ScanFences


def _full(ttl: float = 1.0) -> ScanFences:
    fences = ScanFences(FenceLimits(max_fences=4, ttl=ttl))
    for i in range(4):
        fences.open(b"f%d" % i, b"a", b"z", Timestamp(100, i), now=0.0)
    return fences


def test_a_full_table_of_live_fences_refuses_another() -> None:
    fences = _full()
    with pytest.raises(E.ResourceExhausted, match="4 scan fences are open"):
        fences.hold(b"new", b"a", b"z", 0.5, now=0.5)
    with pytest.raises(E.ResourceExhausted):
        fences.open(b"new", b"a", b"z", Timestamp(200, 0), now=0.5)
    assert len(fences) == 4


def test_lapsed_fences_make_room_without_any_write() -> None:
    fences = _full()
    held = fences.hold(b"new", b"a", b"z", 0.5, now=1.0)  # every fence lapsed at ttl
    assert held.fence_id == b"new" and len(fences) == 1 and fences.any_held
    opened = _full().open(b"new", b"a", b"z", Timestamp(200, 0), now=1.0)
    assert opened.fence_id == b"new"


def test_a_full_table_still_serves_its_own_fences() -> None:
    fences = _full()
    fence = fences.check_read(b"f2", Timestamp(100, 2), b"a", b"z", now=0.5)
    assert fence.fence_id == b"f2" and len(fences) == 4
