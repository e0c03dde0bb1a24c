"""A raftnode's SIGTERM path with in-process twins: restart vs scale-down, lease handoff."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

from rangekv.common.descriptors import RangeDescriptor, ReplicaDescriptor, ReplicaType
from rangekv.common.kube import FixedStatefulSets, PodIdentity
from rangekv.raftnode.ident import StoreIdent
from rangekv.raftnode.shutdown import GracefulShutdown, ShutdownConfig, _handoff_target
from rangekv.v1 import meta_pb2


class _Replica:
    """A led range whose leadership moves when asked (as the raft core would)."""

    def __init__(self, range_id: int, progress: dict[int, tuple[bool, int]]) -> None:
        self.range_id = range_id
        self.replica_id = 1
        self.removed = False
        self.applied_index = 100
        self.descriptor = RangeDescriptor(
            range_id,
            b"",
            b"",
            tuple(ReplicaDescriptor(r, r, ReplicaType.VOTER) for r in (1, *progress)),
            1,
            9,
        )
        self.is_leader = True
        self.transfers: list[int] = []
        status = SimpleNamespace(
            progress={
                r: SimpleNamespace(recent_active=active, match=match)
                for r, (active, match) in progress.items()
            }
        )
        self.raft_status = lambda: status

    def transfer_leadership(self, replica_id: int) -> None:
        self.transfers.append(replica_id)
        self.is_leader = False


class _SleepAdvances:
    """A clock whose sleep returns at once, having moved time on by as much."""

    def __init__(self) -> None:
        self.now = 0.0

    def monotonic(self) -> float:
        return self.now

    def wall_ns(self) -> int:
        return int(self.now * 1e9)

    async def sleep(self, seconds: float) -> None:
        self.now += seconds


class _Stoppable:
    def __init__(self) -> None:
        self.stopped = False

    async def stop(self) -> None:
        self.stopped = True


class _Server:
    def __init__(self) -> None:
        self.draining = False

    async def begin_drain(self) -> None:
        self.draining = True


class _Meta:
    """The registry's answer to Decommission: done after two calls."""

    def __init__(self) -> None:
        self.calls = 0

    async def decommission(self, node_id: int) -> meta_pb2.DecommissionResponse:
        self.calls += 1
        resp = meta_pb2.DecommissionResponse(replicas=max(0, 2 - self.calls))
        resp.node.node.node_id = node_id
        resp.node.state = (  # type: ignore[assignment]
            meta_pb2.NODE_STATE_DECOMMISSIONED
            if self.calls >= 2
            else meta_pb2.NODE_STATE_DECOMMISSIONING
        )
        return resp


def _shutdown(tmp_path: Path, replicas: int, pod: str) -> tuple[GracefulShutdown, dict[str, Any]]:
    led = [_Replica(1, {2: (True, 90), 3: (False, 100)}), _Replica(2, {2: (True, 5), 3: (True, 7)})]
    parts: dict[str, Any] = {
        "store": SimpleNamespace(node_id=4, draining=False, replicas=lambda: led),
        "server": _Server(),
        "rebalancer": _Stoppable(),
        "split_queue": _Stoppable(),
        "meta": _Meta(),
        "led": led,
    }
    shutdown = GracefulShutdown(
        store=parts["store"],
        server=parts["server"],
        queues=(parts["rebalancer"], parts["split_queue"]),
        meta=parts["meta"],
        pod=PodIdentity(pod, "db"),
        statefulsets=FixedStatefulSets({("db", "rk-raftnode"): replicas}),
        data_dir=tmp_path,
        config=ShutdownConfig(decommission_timeout=30, handoff_timeout=5, poll_interval=0.5),
        clock=_SleepAdvances(),
    )
    return shutdown, parts


async def test_a_restart_hands_every_lease_to_an_active_up_to_date_voter(tmp_path: Path) -> None:
    shutdown, parts = _shutdown(tmp_path, replicas=5, pod="rk-raftnode-3")
    await shutdown.run()
    assert parts["meta"].calls == 0  # ordinal 3 < 5 replicas: a restart, not a scale-down
    assert [r.transfers for r in parts["led"]] == [[2], [3]]  # active first, then most log
    assert parts["store"].draining and parts["server"].draining
    assert parts["rebalancer"].stopped and parts["split_queue"].stopped
    assert StoreIdent.load(tmp_path) is None


async def test_a_pod_scaled_away_decommissions_then_hands_off(tmp_path: Path) -> None:
    shutdown, parts = _shutdown(tmp_path, replicas=3, pod="rk-raftnode-3")
    await shutdown.run()
    assert parts["meta"].calls == 2 and shutdown.decommissioned
    assert StoreIdent.load(tmp_path) == StoreIdent(4, decommissioned=True)
    # Outside a cluster the API is never asked.
    outside, parts = _shutdown(tmp_path / "o", replicas=3, pod="")
    await outside.run()
    assert parts["meta"].calls == 0


def test_handoff_target_prefers_a_peer_that_answers() -> None:
    assert _handoff_target(_Replica(1, {2: (False, 100), 3: (True, 50)})) == 3  # type: ignore[arg-type]
    assert _handoff_target(_Replica(1, {2: (True, 60), 3: (True, 50)})) == 2  # type: ignore[arg-type]
