"""The rebalancer pass keeps a moved range where it went for the cool-down.

What a soak showed: a leaseholder moved range 2's replica from node 1 to node 2
and, 5 s later, back, because faults changed the replica counts between its
passes. The pure rule is tested in test_rebalancer.py; this drives the real
`Rebalancer` pass (its wiring of `MoveCooldown` into the spreading rules) over
in-memory stand-ins for the store, the replica changer, meta and the peers.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

from rangekv.common.clock import ManualClock
from rangekv.common.descriptors import RangeDescriptor, ReplicaDescriptor, ReplicaType
from rangekv.raftnode.change import ReplicaChangeConfig
from rangekv.raftnode.rebalancer import Rebalancer
from rangekv.v1 import meta_pb2, replica_pb2

ME = 1
#: Ranges node 1 leads, each with voters on nodes 1, 2 and 3.
LED = 5


def _desc(range_id: int, nodes: tuple[int, ...]) -> RangeDescriptor:
    reps = tuple(ReplicaDescriptor(n, n, ReplicaType.VOTER) for n in nodes)
    return RangeDescriptor(range_id, b"", b"", reps, 5, max(nodes) + 1)


@dataclass
class _Replica:
    range_id: int
    descriptor: RangeDescriptor
    removed: bool = False
    applied_index: int = 100
    is_leader: bool = True


@dataclass
class _Changes:
    """The replica changer: a move rewrites the stand-in range's voters at once."""

    store: Any
    clock: ManualClock
    busy: set[int] = field(default_factory=set)
    moves: list[tuple[int, int, int]] = field(default_factory=list)
    #: Seconds a move takes (a learner's catch-up), on the test's clock.
    takes: float = 0.0

    async def move_replica(self, range_id: int, source: int, target: int) -> None:
        self.clock.advance(self.takes)
        self.moves.append((range_id, source, target))
        replica = self.store.replica(range_id)
        nodes = tuple(target if n == source else n for n in replica.descriptor.voter_node_ids)
        replica.descriptor = _desc(range_id, nodes)


class _Peers:
    """Every peer answers RangeInfo with the replica count the test sets, and as
    many leases as node 1 holds (so no lease move is due)."""

    def __init__(self) -> None:
        self.replica_counts: dict[str, int] = {}

    def stub_at(self, address: str) -> Any:
        async def range_info(_req: Any, timeout: float) -> replica_pb2.RangeInfoResponse:
            return replica_pb2.RangeInfoResponse(
                replica_count=self.replica_counts[address], lease_count=LED
            )

        return SimpleNamespace(RangeInfo=range_info)


def _nodes(clock: ManualClock) -> meta_pb2.ListNodesResponse:
    resp = meta_pb2.ListNodesResponse()
    for node_id in (1, 2, 3, 4):
        st = resp.nodes.add(live=True, last_heartbeat_wall_time=clock.wall_ns())
        st.node.node_id = node_id
        st.node.address = f"n{node_id}"
    return resp


def test_a_moved_range_is_not_moved_back_within_the_cooldown() -> None:
    asyncio.run(_moved_range_rests(move_takes=0.0))


def test_the_cooldown_runs_from_the_end_of_a_long_move() -> None:
    """A move waits for its learner to catch up, which can take longer than the
    cool-down: the rest must start when the move is done."""
    asyncio.run(_moved_range_rests(move_takes=40.0))


async def _moved_range_rests(move_takes: float) -> None:
    clock = ManualClock()
    replicas = {r: _Replica(r, _desc(r, (1, 2, 3))) for r in range(1, LED + 1)}
    store = SimpleNamespace(
        node_id=ME,
        draining=False,
        replicas=lambda: list(replicas.values()),
        replica=replicas.get,
        hlc=SimpleNamespace(physical_now=clock.wall_ns),
    )
    changes = _Changes(store, clock, takes=move_takes)
    peers = _Peers()
    meta = SimpleNamespace(list_nodes=lambda: asyncio.sleep(0, _nodes(clock)))
    config = ReplicaChangeConfig(rebalance_cooldown=30.0)
    rebalancer = Rebalancer(changes, meta, peers, config, clock)  # type: ignore[arg-type]
    # Node 4 is the emptiest by two: range 1's replica moves from node 2 to node 4.
    peers.replica_counts = {"n2": 6, "n3": 5, "n4": 3}
    assert await rebalancer.rebalance_once() == 1
    assert changes.moves == [(1, 2, 4)]
    # Faults change the counts: node 2 is now the emptiest by two. Within the
    # cool-down range 1 stays; the other ranges already have a replica there.
    clock.advance(5.0)
    peers.replica_counts = {"n2": 3, "n3": 5, "n4": 6}
    assert await rebalancer.rebalance_once() == 0
    assert changes.moves == [(1, 2, 4)]
    # After it, the spreading rule applies to the range again.
    clock.advance(30.0)
    assert await rebalancer.rebalance_once() == 1
    assert changes.moves == [(1, 2, 4), (1, 4, 2)]
