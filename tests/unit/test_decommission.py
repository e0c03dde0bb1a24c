"""Decommissioning: the registry's node states (over a real StateEngine), the
rebalancer's moves off a draining node, and the function that follows a decommission."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from rangekv.common import errors as E
from rangekv.common.descriptors import RangeDescriptor, ReplicaDescriptor, ReplicaType
from rangekv.metarange.client import DecommissionProgress, decommission_node
from rangekv.metarange.commands import (
    Bootstrap,
    Command,
    CommandResult,
    Heartbeat,
    SetNodeState,
    SetNodeStateResult,
    decode_command,
    encode_command,
)
from rangekv.metarange.reads import get_node, ranges_on_node
from rangekv.metarange.records import (
    NodeDescriptor,
    NodeRecord,
    NodeState,
    decode_value,
    encode_value,
    node_from_json,
    node_to_json,
)
from rangekv.metarange.state import MetaStateMachine
from rangekv.raftnode.rebalancer import Action, NodeHealth, node_health, plan_action
from rangekv.replication.state_engine import StateEngine
from rangekv.replication.sync_mode import FsmSyncMode
from rangekv.v1 import meta_pb2

V, L = ReplicaType.VOTER, ReplicaType.LEARNER
WHOLE = RangeDescriptor(
    1, b"", b"", tuple(ReplicaDescriptor(n, n) for n in (1, 2, 3)), 0, next_replica_id=4
)


class Meta:
    def __init__(self, engine: StateEngine) -> None:
        self.engine = engine
        self.sm = MetaStateMachine()

    def apply(self, cmd: Command) -> CommandResult | E.RangeKVError:
        batch = self.engine.new_batch()
        result = self.sm.apply(encode_command(cmd), batch)
        self.engine.commit(batch)
        return result

    def run(self, cmd: Command) -> CommandResult:
        result = self.apply(cmd)
        if isinstance(result, E.RangeKVError):
            raise result
        return result


@pytest.fixture
def meta(tmp_path: Path) -> Iterator[Meta]:
    engine = StateEngine.open(tmp_path / "meta", FsmSyncMode.NOSYNC)
    m = Meta(engine)
    m.run(Bootstrap(WHOLE))
    for n in (1, 2, 3, 4):
        m.run(Heartbeat(NodeDescriptor(n, f"n{n}:7000"), 1_000))
    yield m
    engine.close()


def test_an_active_record_encodes_as_before_and_states_round_trip() -> None:
    active = NodeRecord(NodeDescriptor(4, "a:1", "a:2"), 7)
    assert "st" not in decode_value(encode_value(node_to_json(active)))
    for state in NodeState:
        rec = NodeRecord(NodeDescriptor(4, "a:1"), 7, state)
        assert node_from_json(decode_value(encode_value(node_to_json(rec)))) == rec
    cmd = SetNodeState(4, NodeState.DECOMMISSIONING)
    assert decode_command(encode_command(cmd)) == cmd
    with pytest.raises(E.InvalidArgument):
        SetNodeState(0, NodeState.ACTIVE)


def test_decommission_moves_only_forward_and_needs_an_empty_node(meta: Meta) -> None:
    # An empty node (4): active -> decommissioning -> decommissioned.
    with pytest.raises(E.FailedPrecondition, match="active: it cannot become decommissioned"):
        meta.run(SetNodeState(4, NodeState.DECOMMISSIONED))
    meta.run(SetNodeState(4, NodeState.DECOMMISSIONING))
    # A heartbeat keeps the state (the node is still up while it drains).
    meta.run(Heartbeat(NodeDescriptor(4, "n4:7001"), 2_000))
    rec = get_node(meta.engine, 4)
    assert rec is not None and rec.state is NodeState.DECOMMISSIONING
    assert rec.node.address == "n4:7001"
    result = meta.run(SetNodeState(4, NodeState.DECOMMISSIONED))
    assert isinstance(result, SetNodeStateResult)
    assert result.record.state is NodeState.DECOMMISSIONED
    # Final: no way back, and the node's heartbeats are refused with the reason.
    for back in (NodeState.ACTIVE, NodeState.DECOMMISSIONING):
        with pytest.raises(E.FailedPrecondition, match="decommissioned: it cannot become"):
            meta.run(SetNodeState(4, back))
    with pytest.raises(E.FailedPrecondition, match="node 4 is decommissioned: its store"):
        meta.run(Heartbeat(NodeDescriptor(4, "n4:7001"), 3_000))
    # Unknown nodes are NOT_FOUND.
    with pytest.raises(E.NotFound):
        meta.run(SetNodeState(9, NodeState.DECOMMISSIONING))
    states = {s.node.node_id: s.state for s in meta.sm.list_nodes(meta.engine, 3_000, 10_000)}
    assert states == {
        1: NodeState.ACTIVE,
        2: NodeState.ACTIVE,
        3: NodeState.ACTIVE,
        4: NodeState.DECOMMISSIONED,
    }


def test_a_node_that_a_range_names_cannot_be_retired(meta: Meta) -> None:
    assert ranges_on_node(meta.engine, 3) == [1]
    meta.run(SetNodeState(3, NodeState.DECOMMISSIONING))
    with pytest.raises(E.FailedPrecondition, match="still holds replicas of 1 range"):
        meta.run(SetNodeState(3, NodeState.DECOMMISSIONED))
    # Recommissioning a draining node is allowed.
    meta.run(SetNodeState(3, NodeState.ACTIVE))
    rec = get_node(meta.engine, 3)
    assert rec is not None and rec.state is NodeState.ACTIVE


LIVE = NodeHealth(live=True, dead=False)
LEAVING = NodeHealth(live=True, dead=False, draining=True)
LEFT_DOWN = NodeHealth(live=False, dead=False, draining=True)


def _desc(*replicas: tuple[int, int, ReplicaType], range_id: int = 1) -> RangeDescriptor:
    reps = tuple(ReplicaDescriptor(n, r, t) for n, r, t in replicas)
    return RangeDescriptor(range_id, b"", b"", reps, 5, max(r for _n, r, _t in replicas) + 1)


def test_a_draining_voter_is_replaced_then_removed() -> None:
    three = _desc((1, 1, V), (2, 2, V), (4, 3, V))
    health = {1: LIVE, 2: LIVE, 3: LIVE, 4: LEAVING, 5: LEAVING}
    # First a replacement on a staying node (never on another draining node) ...
    assert plan_action(three, 1, health, 3) == Action("add", 3)
    # ... then, once it joined, the draining voter goes.
    four = _desc((1, 1, V), (2, 2, V), (4, 3, V), (3, 4, V))
    assert plan_action(four, 1, health, 3) == Action("remove", 4)
    # It goes even if it is down already (a scaled-away pod).
    assert plan_action(four, 1, {**health, 4: LEFT_DOWN}, 3) == Action("remove", 4)
    # A learner on a draining node is removed, not promoted.
    learner = _desc((1, 1, V), (2, 2, V), (3, 3, V), (5, 4, L))
    assert plan_action(learner, 1, health, 3) == Action("remove", 5)


def test_a_draining_leaseholder_adds_first_then_hands_its_lease_to_a_staying_voter() -> None:
    three = _desc((1, 1, V), (2, 2, V), (4, 3, V), range_id=7)
    health = {1: LIVE, 2: LIVE, 3: LIVE, 4: LEAVING}
    assert plan_action(three, 4, health, 3) == Action("add", 3)
    four = _desc((1, 1, V), (2, 2, V), (4, 3, V), (3, 4, V), range_id=7)
    action = plan_action(four, 4, health, 3)
    assert action is not None and action.kind == "transfer" and action.node_id in (1, 2, 3)
    # With nowhere to add, it still hands the lease away; the range stays under-replicated
    # on staying nodes rather than losing a voter.
    small = {1: LIVE, 2: LIVE, 4: LEAVING}
    action = plan_action(three, 4, small, 3)
    assert action is not None and action.kind == "transfer"
    assert plan_action(three, 1, small, 3) is None  # never drops below the factor


def test_node_health_reads_the_registry_state() -> None:
    nodes = meta_pb2.ListNodesResponse()
    for node_id, state in (
        (1, meta_pb2.NODE_STATE_ACTIVE),
        (2, meta_pb2.NODE_STATE_DECOMMISSIONING),
    ):
        st = nodes.nodes.add(live=True, last_heartbeat_wall_time=10, state=state)
        st.node.node_id = node_id
    old = nodes.nodes.add(live=True, last_heartbeat_wall_time=10)  # from before node states
    old.node.node_id = 3
    health = node_health(nodes, 10, 60.0)
    assert [health[n].draining for n in (1, 2, 3)] == [False, True, False]


class _Registry:
    """An in-memory twin of the meta range's Decommission RPC: each call moves
    one replica off the node (as the rebalancers would between two polls)."""

    def __init__(self, replicas: int) -> None:
        self.replicas = replicas
        self.state = meta_pb2.NODE_STATE_ACTIVE
        self.calls = 0

    async def decommission(self, node_id: int) -> meta_pb2.DecommissionResponse:
        self.calls += 1
        if self.state == meta_pb2.NODE_STATE_ACTIVE:
            self.state = meta_pb2.NODE_STATE_DECOMMISSIONING
        elif self.replicas:
            self.replicas -= 1
        if self.replicas == 0:
            self.state = meta_pb2.NODE_STATE_DECOMMISSIONED
        resp = meta_pb2.DecommissionResponse(replicas=self.replicas)
        resp.node.node.node_id = node_id
        resp.node.state = self.state  # type: ignore[assignment]
        resp.range_ids.extend(range(1, self.replicas + 1))
        return resp


async def _follow(registry: _Registry, **kwargs: object) -> tuple[DecommissionProgress, list[str]]:
    now = [0.0]
    seen: list[str] = []

    async def sleep(seconds: float) -> None:
        now[0] += seconds

    async def main() -> DecommissionProgress:
        return await decommission_node(
            registry,  # type: ignore[arg-type]
            4,
            monotonic=lambda: now[0],
            sleep=sleep,
            on_progress=lambda p: seen.append(p.describe()),
            **kwargs,  # type: ignore[arg-type]
        )

    return await main(), seen


async def test_decommission_node_follows_the_registry_to_the_end() -> None:
    progress, seen = await _follow(_Registry(3))
    assert progress.done and progress.replicas == 0
    assert seen[0] == "node 4: decommissioning, 3 replica(s) left (r1, r2, r3)"
    assert seen[-1] == "node 4: decommissioned"

    started, _ = await _follow(_Registry(3), wait=False)
    assert started.state is NodeState.DECOMMISSIONING and not started.done

    with pytest.raises(E.DeadlineExceeded, match=r"95 replica\(s\) left .* after 5s"):
        await _follow(_Registry(100), timeout=5.0, poll_interval=1.0)


class _Flaky(_Registry):
    """The meta range is unavailable for the first two calls (an election)."""

    async def decommission(self, node_id: int) -> meta_pb2.DecommissionResponse:
        self.calls += 1
        if self.calls <= 2:
            raise E.Unavailable("meta range unreachable: electing")
        self.calls -= 1
        return await super().decommission(node_id)


async def test_decommission_node_rides_out_an_unavailable_meta_range() -> None:
    progress, seen = await _follow(_Flaky(2))
    assert progress.done and seen[-1] == "node 4: decommissioned"
    with pytest.raises(E.Unavailable):
        await _follow(_Flaky(2), wait=False)
