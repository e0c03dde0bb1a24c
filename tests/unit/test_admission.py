"""The gateway refuses what it cannot take at once, instead of queueing it without bound."""

from __future__ import annotations

import pytest

from rangekv.common import errors as E
from rangekv.gateway.kv_service import Admission


def test_admission_refuses_past_its_limit_and_recovers() -> None:
    gate = Admission(3)
    gate.enter(2)
    gate.enter()
    with pytest.raises(E.ResourceExhausted) as refused:
        gate.enter()
    assert refused.value.retry_after > 0 and "limit is 3" in refused.value.message
    assert gate.refused == 1
    gate.leave(2)
    gate.enter(2)
    assert gate.inflight == 3


def test_one_call_bigger_than_the_limit_is_taken_when_alone() -> None:
    """A Batch of more operations than the limit still runs when nothing else does
    (the limit bounds concurrency; the batch size has its own limit)."""
    gate = Admission(3)
    gate.enter(10)
    with pytest.raises(E.ResourceExhausted):
        gate.enter()
