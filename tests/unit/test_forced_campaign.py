"""RaftGroup.force_campaign: when a new group's first election is forced.

A split's right-hand group is created with no leader, and the node that led the
left-hand side forces its first election at once, then again every other tick
while no leader is known. A forced election ignores the voters' promise to a
leader (its lease), which is safe only while no other replica can have won an
election of its own: a peer needs an election timeout of its own ticks for that,
which (ticks not in phase) can be one interval short in real time. So the last
forced election comes two ticks before the timeout, never at it.
"""

from __future__ import annotations

from collections.abc import Mapping

from rangekv.raft import ConfChange, Config, ConfState, MemoryStorage, RawNode
from rangekv.replication.group import RaftGroup
from rangekv.replication.state_engine import StateBatch
from rangekv.replication.state_machine import Span


class _NothingApplied:
    """A state machine this test never reaches (nothing commits: no peer answers)."""

    def apply_command(self, index: int, command: bytes, batch: StateBatch) -> object:
        raise AssertionError("nothing commits here")

    def apply_conf_change(self, index: int, cc: ConfChange, batch: StateBatch) -> None:
        raise AssertionError("nothing commits here")

    def record_applied(self, index: int, term: int, batch: StateBatch) -> None:
        raise AssertionError("nothing commits here")

    def snapshot_spans(self) -> list[Span]:
        return []

    def snapshot_installed(self, local: Mapping[bytes, bytes]) -> None:
        pass


def _forced_at(election_tick: int, ticks: int) -> list[int]:
    """The ticks (counted from the call) at which an isolated new group forced an
    election, after `force_campaign(election_tick)`."""
    node = RawNode(
        Config(id=1, election_tick=election_tick, rng_seed=1), MemoryStorage(ConfState((1, 2, 3)))
    )
    group = RaftGroup(
        7, node, _NothingApplied(), wake=lambda g: None, incarnation=1, applied_index=0
    )
    group.force_campaign(election_tick)
    assert node.raft.term == 1  # the first one, at once
    out = []
    for j in range(1, ticks + 1):
        before = node.raft.term
        group.tick(float(j))
        group.drain_inputs()
        if node.raft.term > before:
            out.append(j)
    return out


def test_forced_elections_stop_two_ticks_before_the_election_timeout() -> None:
    assert _forced_at(10, 14) == [2, 4, 6, 8]
    assert _forced_at(5, 9) == [1, 3]  # the last at 3 = 5 - 2, never at 5


def test_no_forcing_once_a_leader_is_known() -> None:
    node = RawNode(Config(id=1, election_tick=10, rng_seed=1), MemoryStorage(ConfState((1,))))
    group = RaftGroup(
        7, node, _NothingApplied(), wake=lambda g: None, incarnation=1, applied_index=0
    )
    group.force_campaign(10)  # a single voter wins at once
    assert node.is_leader()
    term = node.raft.term
    for j in range(1, 12):
        group.tick(float(j))
        group.drain_inputs()
    assert node.raft.term == term
