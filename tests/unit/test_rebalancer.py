"""The rebalancer's decisions and the replica-change step builder (pure logic)."""

from __future__ import annotations

import pytest

from rangekv.common import errors as E
from rangekv.common.descriptors import RangeDescriptor, ReplicaDescriptor, ReplicaType
from rangekv.raft import ConfChangeType
from rangekv.raftnode.change import ADD_LEARNER, PROMOTE_VOTER, REMOVE, changed_replicas
from rangekv.raftnode.rebalancer import (
    Action,
    NodeHealth,
    node_health,
    plan_action,
    plan_lease_move,
)
from rangekv.v1 import meta_pb2

LIVE = NodeHealth(live=True, dead=False)
DOWN = NodeHealth(live=False, dead=False)  # not live, not yet dead
DEAD = NodeHealth(live=False, dead=True)


def desc(*replicas: tuple[int, int, ReplicaType], range_id: int = 1) -> RangeDescriptor:
    reps = tuple(ReplicaDescriptor(n, r, t) for n, r, t in replicas)
    return RangeDescriptor(range_id, b"", b"", reps, 5, max(r for _n, r, _t in replicas) + 1)


V, L = ReplicaType.VOTER, ReplicaType.LEARNER
THREE = desc((1, 1, V), (2, 2, V), (3, 3, V))


def test_healthy_range_at_the_factor_is_left_alone() -> None:
    health = {1: LIVE, 2: LIVE, 3: LIVE, 4: LIVE}
    assert plan_action(THREE, 1, health, 3) is None


def test_a_down_but_not_dead_voter_is_not_replaced_yet() -> None:
    assert plan_action(THREE, 1, {1: LIVE, 2: DOWN, 3: LIVE, 4: LIVE}, 3) is None


def test_a_dead_voter_gets_a_replacement_then_goes() -> None:
    health = {1: LIVE, 2: DEAD, 3: LIVE, 4: LIVE}
    assert plan_action(THREE, 1, health, 3) == Action("add", 4)
    four = desc((1, 1, V), (2, 2, V), (3, 3, V), (4, 4, V))
    assert plan_action(four, 1, health, 3) == Action("remove", 2)


def test_a_dead_voter_without_anywhere_to_go_stays() -> None:
    assert plan_action(THREE, 1, {1: LIVE, 2: DEAD, 3: LIVE}, 3) is None


def test_the_leaseholder_is_never_judged_dead() -> None:
    assert plan_action(THREE, 2, {1: LIVE, 2: DEAD, 3: LIVE, 4: LIVE}, 3) is None


def test_missing_voters_are_added_on_live_nodes_spread_by_range() -> None:
    two = desc((1, 1, V), (2, 2, V), range_id=7)
    health = {1: LIVE, 2: LIVE, 3: LIVE, 4: LIVE, 5: DOWN}
    assert plan_action(two, 1, health, 3) == Action("add", [3, 4][7 % 2])
    assert plan_action(two, 1, {1: LIVE, 2: LIVE}, 3) is None


def test_surplus_voters_are_removed_down_to_the_factor_never_the_leaseholder() -> None:
    # e.g. the right-hand side of a split made while a move had added its voter
    four = desc((1, 1, V), (2, 2, V), (3, 3, V), (4, 4, V), range_id=5)
    health = {n: LIVE for n in (1, 2, 3, 4)}
    assert plan_action(four, 1, health, 3) == Action("remove", [2, 3, 4][5 % 3])
    for leader in (1, 2, 3, 4):
        action = plan_action(four, leader, health, 3)
        assert action is not None and action.kind == "remove" and action.node_id != leader
    # a voter that is down (not yet dead) goes first
    assert plan_action(four, 1, {**health, 3: DOWN}, 3) == Action("remove", 3)
    # at the factor, or with a higher factor, nothing goes
    assert plan_action(four, 1, health, 4) is None
    assert plan_action(THREE, 1, {n: LIVE for n in (1, 2, 3)}, 3) is None


def test_leftover_learners_are_promoted_or_removed() -> None:
    with_learner = desc((1, 1, V), (2, 2, V), (3, 3, V), (4, 4, L))
    assert plan_action(with_learner, 1, {n: LIVE for n in (1, 2, 3, 4)}, 3) == Action("promote", 4)
    health = {1: LIVE, 2: LIVE, 3: LIVE, 4: DEAD}
    assert plan_action(with_learner, 1, health, 3) == Action("remove", 4)


def test_node_health_from_the_registry() -> None:
    now = 100 * 10**9
    resp = meta_pb2.ListNodesResponse(
        nodes=[
            meta_pb2.NodeStatus(live=True, last_heartbeat_wall_time=now),
            meta_pb2.NodeStatus(live=False, last_heartbeat_wall_time=now - 5 * 10**9),
            meta_pb2.NodeStatus(live=False, last_heartbeat_wall_time=now - 61 * 10**9),
        ]
    )
    for i, st in enumerate(resp.nodes):
        st.node.node_id = i + 1
    assert node_health(resp, now, 60.0) == {1: LIVE, 2: DOWN, 3: DEAD}


def test_changed_replicas_steps() -> None:
    reps, cc, rid = changed_replicas(THREE, ADD_LEARNER, 4)
    assert cc == ConfChangeType.ADD_LEARNER and rid == THREE.next_replica_id
    assert reps[-1] == ReplicaDescriptor(4, rid, L)
    learner = desc((1, 1, V), (2, 2, V), (3, 3, V), (4, 4, L))
    reps, cc, rid = changed_replicas(learner, PROMOTE_VOTER, 4)
    assert cc == ConfChangeType.ADD_NODE and rid == 4 and reps[-1].type == V
    reps, cc, rid = changed_replicas(THREE, REMOVE, 2)
    assert cc == ConfChangeType.REMOVE_NODE and rid == 2 and [r.node_id for r in reps] == [1, 3]
    with pytest.raises(E.InvalidArgument):
        changed_replicas(THREE, ADD_LEARNER, 2)
    with pytest.raises(E.InvalidArgument):
        changed_replicas(THREE, PROMOTE_VOTER, 2)
    with pytest.raises(E.InvalidArgument):
        changed_replicas(desc((1, 1, V)), REMOVE, 1)


# --- lease spreading ----------------------------------------------------------------------


def test_lease_moves_from_the_most_loaded_node_to_the_least_loaded_voter() -> None:
    led = [(1, (1, 2, 3)), (2, (1, 2, 3)), (3, (1, 2, 3)), (4, (1, 2, 3))]
    assert plan_lease_move(led, {1: 4, 2: 0, 3: 1}, me=1) == (1, 2)


def test_no_lease_move_within_one_of_the_emptiest_voter() -> None:
    # Hysteresis: 2 vs 1 is not worth a transfer (leases would ping-pong).
    assert plan_lease_move([(1, (1, 2, 3)), (2, (1, 2, 3))], {1: 2, 2: 2, 3: 1}, me=1) is None
    # A new node with none gets one from a node with two, mean or not.
    led = [(1, (1, 2, 5)), (2, (1, 3, 4))]
    assert plan_lease_move(led, {1: 2, 2: 1, 3: 2, 4: 0, 5: 0}, me=1) == (1, 5)


def test_no_lease_move_to_a_node_without_a_voter() -> None:
    led = [(1, (1, 2)), (2, (1, 2)), (3, (1, 2))]
    # Node 3 has no leases but no replica of these ranges; node 2 is as loaded as it can help.
    assert plan_lease_move(led, {1: 3, 2: 2, 3: 0}, me=1) is None


def test_no_lease_move_when_alone() -> None:
    assert plan_lease_move([(1, (1,)), (2, (1,))], {1: 2}, me=1) is None


def test_replicas_move_to_the_emptiest_node_with_hysteresis() -> None:
    from rangekv.raftnode.rebalancer import plan_replica_move

    led = [(1, (1, 2, 3)), (2, (1, 2, 3)), (3, (1, 2, 4))]
    # A new node 5 holds nothing: a replica of a range it is not in moves there,
    # from the fullest voter that is not this node (1).
    assert plan_replica_move(led, {1: 6, 2: 6, 3: 5, 4: 1, 5: 0}, 1) == (1, 2, 5)
    # Within one of each other: nothing moves.
    assert plan_replica_move(led, {1: 4, 2: 4, 3: 3, 4: 4, 5: 3}, 1) is None
    # Never from the leaseholder itself.
    assert plan_replica_move([(1, (1, 5, 6))], {1: 9, 5: 1, 6: 1, 7: 0}, 1) is None
    assert plan_replica_move(led, {1: 3}, 1) is None


def test_resting_ranges_are_not_moved_for_spreading() -> None:
    from rangekv.raftnode.rebalancer import plan_replica_move

    led = [(1, (1, 2, 3)), (2, (1, 2, 3))]
    counts = {1: 6, 2: 6, 3: 5, 4: 0}
    assert plan_replica_move(led, counts, 1) == (1, 2, 4)
    assert plan_replica_move(led, counts, 1, frozenset({1})) == (2, 2, 4)
    assert plan_replica_move(led, counts, 1, frozenset({1, 2})) is None
    leases = {1: 4, 2: 0, 3: 1}
    four = [(1, (1, 2, 3)), (2, (1, 2, 3)), (3, (1, 2, 3)), (4, (1, 2, 3))]
    assert plan_lease_move(four, leases, 1, frozenset({1, 2})) == (3, 2)
    assert plan_lease_move(four, leases, 1, frozenset({1, 2, 3, 4})) is None


def test_move_cooldown_forgets_a_range_after_its_rest() -> None:
    from rangekv.raftnode.rebalancer import MoveCooldown

    cooldown = MoveCooldown(30.0)
    cooldown.moved(7, now=100.0)
    cooldown.moved(8, now=120.0)
    assert cooldown.resting(129.9) == {7, 8}
    assert cooldown.resting(130.0) == {8}
    assert cooldown.resting(150.0) == frozenset()
    off = MoveCooldown(0.0)
    off.moved(7, now=100.0)
    assert off.resting(100.0) == frozenset()
