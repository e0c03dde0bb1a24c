"""The meta range's raft group inside a metarange process.

One raft group (`META_GROUP_ID`) replicated on the metarange processes; replica
id = metarange node id. Commands are proposed on the leader and answered
after the leader applied them; refusals (ConditionFailed, IntentExists...) are
committed no-ops whose error the proposer raises. Consistent reads use the
same lease / read-index / not-leader ladder as ranges (RaftGroup.await_read_point).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from rangekv.common import errors as E
from rangekv.metarange.commands import Command, encode_command
from rangekv.metarange.keys import META_PREFIX
from rangekv.metarange.state import MetaStateMachine
from rangekv.raft import Entry, Message
from rangekv.replication.group import NotLeaderNow, RaftGroup
from rangekv.replication.host import GroupHost, HostConfig, SendRaft, Span
from rangekv.replication.scheduler import SchedulerMetrics
from rangekv.replication.state_engine import AppliedState, StateBatch, prefix_end, range_local_span
from rangekv.v1 import types_pb2

META_GROUP_ID = 1


@dataclass
class MetaCounters:
    """Lookups by mode and intents written/resolved; telemetry reads these."""

    lookups: dict[str, int] = field(default_factory=lambda: {"consistent": 0, "inconsistent": 0})
    reads: dict[str, int] = field(
        default_factory=lambda: {"hit": 0, "readindex": 0, "not_leader": 0}
    )

    def count_read(self, outcome: str) -> None:
        self.reads[outcome] += 1


class MetaReplica(RaftGroup):
    def __init__(
        self,
        host: MetaHost,
        replica_id: int,
        raw_node: Any,
        applied: AppliedState,
    ) -> None:
        super().__init__(META_GROUP_ID, raw_node, wake=host.scheduler.wake)
        self.host = host
        self.replica_id = replica_id
        self.applied_index = applied.index
        self.sm = MetaStateMachine()

    def apply_command(self, entry: Entry, command: bytes, batch: StateBatch) -> Any:
        return self.sm.apply(command, batch)

    def record_applied(self, index: int, term: int, batch: StateBatch) -> None:
        batch.set_applied_state(META_GROUP_ID, AppliedState(index, term))

    def not_leader(self) -> E.NotLeader:
        lead = self.raw_node.leader()
        return E.NotLeader(lead, self.host.peer_address(lead), self.raw_node.raft.term)

    async def execute(self, cmd: Command) -> Any:
        """Propose `cmd` and return its result once applied here; raise its refusal."""
        if not self.raw_node.is_leader():
            raise self.not_leader()
        result = await self.await_applied(
            self.propose(encode_command(cmd)),
            self.host.write_timeout,
            "meta command",
            self.not_leader,
        )
        if isinstance(result, E.RangeKVError):
            raise result
        return result

    async def read_point(self, consistent: bool) -> None:
        if not consistent:
            return
        try:
            await self.await_read_point(
                self.host.monotonic(), self.host.read_index_timeout, self.host.counters.count_read
            )
        except TimeoutError:
            raise E.Unavailable("meta read-index timed out (no quorum?)", retry_after=0.2) from None
        except NotLeaderNow:
            raise self.not_leader() from None


class MetaHost(GroupHost):
    """A metarange process's raft machinery: one group, peers by node id."""

    def __init__(
        self,
        config: HostConfig,
        *,
        peers: dict[int, str],
        send_raft: SendRaft,
        scheduler_metrics: SchedulerMetrics | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        read_index_timeout: float = 2.0,
        write_timeout: float = 5.0,
    ) -> None:
        super().__init__(
            config, send_raft=send_raft, scheduler_metrics=scheduler_metrics, monotonic=monotonic
        )
        self.peers = peers
        self.monotonic = monotonic
        self.read_index_timeout = read_index_timeout
        self.write_timeout = write_timeout
        self.counters = MetaCounters()
        self.replica: MetaReplica | None = None

    def peer_address(self, node_id: int) -> str:
        return self.peers.get(node_id, "")

    def open_replica(self, voters: tuple[int, ...]) -> MetaReplica:
        """Load the meta replica, bootstrapping the group on first start."""
        from rangekv.raft import ConfState, HardState, Snapshot, SnapshotMetadata

        node_id = self.host_config.node_id
        if not self.log_engine.group_ids():
            if node_id not in voters:
                raise ValueError(f"metarange node {node_id} is not among the voters {voters}")
            meta = SnapshotMetadata(10, 5, ConfState(tuple(sorted(voters)), ()))
            batch = self.log_engine.new_batch()
            batch.apply_snapshot(META_GROUP_ID, Snapshot(meta))
            batch.set_hard_state(META_GROUP_ID, HardState(term=5, commit=10))
            self.log_engine.commit(batch)
            state = self.state_engine.new_batch()
            state.set_applied_state(META_GROUP_ID, AppliedState(10, 5))
            self.state_engine.commit(state, force_sync=True)
        applied = self.applied_state(META_GROUP_ID)
        raw_node = self.new_raw_node(META_GROUP_ID, node_id, applied)
        replica = MetaReplica(self, node_id, raw_node, applied)
        self.scheduler.add_group(replica)
        self.replica = replica
        return replica

    def route(
        self, group: RaftGroup, msg: Message
    ) -> tuple[int, types_pb2.RangeDescriptor | None] | None:
        return msg.to, None

    def snapshot_spans(self, group: RaftGroup) -> list[Span]:
        return [range_local_span(META_GROUP_ID), (META_PREFIX, prefix_end(META_PREFIX))]

    def handle_raft(
        self, messages: list[tuple[int, Message, types_pb2.RangeDescriptor | None]]
    ) -> None:
        replica = self.replica
        if replica is None:
            return
        for group_id, msg, _desc in messages:
            if group_id == META_GROUP_ID and msg.to == replica.replica_id:
                replica.deliver(msg)

    async def handle_snapshot(self, group_id: int, message: Message, chunks: Any) -> bool:
        """Ingest a streamed snapshot of the meta group, then hand SNAP to raft."""
        replica = self.replica
        if replica is None or group_id != META_GROUP_ID or message.to != replica.replica_id:
            return False
        return await self.install_snapshot(replica, message, self.snapshot_spans(replica), chunks)
