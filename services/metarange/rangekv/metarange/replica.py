"""The meta range's raft group inside a metarange process.

One raft group (`META_GROUP_ID`) replicated on the metarange processes; replica
id = metarange node id. `MetaHost` composes a `GroupHost` with what is the meta
range's own: replica ids are node ids (its `Router`), its state machine is
`MetaStateMachine`, and it is the process's `RaftEndpoint`. Commands are
proposed on the leader and answered after the leader applied them; refusals
(ConditionFailed, IntentExists...) are committed no-ops whose error the
proposer raises. Consistent reads use the same lease / read-index / not-leader
ladder as ranges (RaftGroup.await_read_point).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from rangekv.common import errors as E
from rangekv.metarange.commands import Command, encode_command
from rangekv.metarange.keys import META_GROUP_ID
from rangekv.metarange.state import MetaStateMachine
from rangekv.raft import ConfState, HardState, Message, Snapshot, SnapshotMetadata
from rangekv.replication.group import NotLeaderNow, RaftGroup
from rangekv.replication.host import GroupHost, HostConfig, HostSeams, Route
from rangekv.replication.raft_network import Inbound
from rangekv.replication.state_engine import AppliedState, StateEngine
from rangekv.v1 import types_pb2

__all__ = ["META_GROUP_ID", "MetaCounters", "MetaHost"]


@dataclass
class MetaCounters:
    """Lookups by mode and reads by outcome; telemetry reads these."""

    lookups: dict[str, int] = field(default_factory=lambda: {"consistent": 0, "inconsistent": 0})
    reads: dict[str, int] = field(
        default_factory=lambda: {"hit": 0, "readindex": 0, "not_leader": 0}
    )

    def count_read(self, outcome: str) -> None:
        self.reads[outcome] += 1


class MetaHost:
    """A metarange process's raft machinery: one group, peers by node id."""

    def __init__(
        self,
        config: HostConfig,
        seams: HostSeams,
        *,
        peers: dict[int, str],
        read_index_timeout: float = 2.0,
        write_timeout: float = 5.0,
    ) -> None:
        self.host = GroupHost(config, self, seams)
        self.node_id = config.node_id
        self.peers = peers
        self.clock = seams.clock
        self.read_index_timeout = read_index_timeout
        self.write_timeout = write_timeout
        self.counters = MetaCounters()
        self.state = MetaStateMachine()
        self.group: RaftGroup | None = None

    @property
    def state_engine(self) -> StateEngine:
        return self.host.state_engine

    def peer_address(self, node_id: int) -> str:
        return self.peers.get(node_id, "")

    def open_replica(self, voters: tuple[int, ...]) -> RaftGroup:
        """Load the meta replica, bootstrapping the group on first start."""
        host = self.host
        if not host.log_engine.group_ids():
            if self.node_id not in voters:
                raise ValueError(f"metarange node {self.node_id} is not among the voters {voters}")
            meta = SnapshotMetadata(10, 5, ConfState(tuple(sorted(voters)), ()))
            batch = host.log_engine.new_batch()
            batch.apply_snapshot(META_GROUP_ID, Snapshot(meta))
            batch.set_hard_state(META_GROUP_ID, HardState(term=5, commit=10))
            host.log_engine.commit(batch)
            state = host.state_engine.new_batch()
            state.set_applied_state(META_GROUP_ID, AppliedState(10, 5))
            host.state_engine.commit(state, force_sync=True)
        self.group = host.add_group(META_GROUP_ID, self.node_id, self.state)
        return self.group

    def start(self) -> None:
        self.host.start()

    async def stop(self) -> None:
        await self.host.stop()

    # --- serving (MetaBackend) -----------------------------------------------------

    def _group(self) -> RaftGroup:
        if self.group is None:
            raise E.Unavailable("meta replica not open yet", retry_after=0.5)
        return self.group

    def is_leader(self) -> bool:
        return self.group is not None and self.group.is_leader

    def leader(self) -> tuple[int, str]:
        """The leader this replica believes in: (node id, address); (0, "") if none."""
        lead = self._group().leader()
        return lead, self.peer_address(lead)

    def not_leader(self) -> E.NotLeader:
        group = self._group()
        lead = group.leader()
        return E.NotLeader(lead, self.peer_address(lead), group.term())

    async def execute(self, cmd: Command) -> Any:
        """Propose `cmd` and return its result once applied here; raise its refusal."""
        group = self._group()
        if not group.is_leader:
            raise self.not_leader()
        result = await group.await_applied(
            group.propose(encode_command(cmd)),
            self.write_timeout,
            "meta command",
            self.not_leader,
        )
        if isinstance(result, E.RangeKVError):
            raise result
        return result

    async def read_point(self, consistent: bool) -> None:
        group = self._group()
        if not consistent:
            return
        try:
            await group.await_read_point(
                self.clock.monotonic(), self.read_index_timeout, self.counters.count_read
            )
        except TimeoutError:
            raise E.Unavailable("meta read-index timed out (no quorum?)", retry_after=0.2) from None
        except NotLeaderNow:
            raise self.not_leader() from None

    # --- raft traffic (Router and RaftEndpoint) -------------------------------------

    def route(self, group_id: int, msg: Message) -> Route | None:
        return msg.to, None

    def handle_raft(self, messages: Sequence[Inbound]) -> None:
        group = self.group
        if group is None:
            return
        for group_id, msg, _desc in messages:
            if group_id == META_GROUP_ID and msg.to == group.replica_id:
                group.deliver(msg)

    async def handle_snapshot(
        self,
        group_id: int,
        message: Message,
        descriptor: types_pb2.RangeDescriptor | None,
        chunks: AsyncIterator[bytes],
    ) -> bool:
        """Ingest a streamed snapshot of the meta group, then hand SNAP to raft."""
        group = self.group
        if group is None or group_id != META_GROUP_ID or message.to != group.replica_id:
            return False
        return await self.host.install_snapshot(group, message, self.state.snapshot_spans(), chunks)

    def snapshot_source(self, group_id: int, message: Message) -> AsyncIterator[bytes]:
        return self.host.snapshot_source(group_id, message)

    def report_unreachable(self, node_id: int, group_id: int, replica_id: int) -> None:
        self.host.report_unreachable(node_id, group_id, replica_id)

    def report_snapshot(self, node_id: int, group_id: int, replica_id: int, failed: bool) -> None:
        self.host.report_snapshot(node_id, group_id, replica_id, failed)
