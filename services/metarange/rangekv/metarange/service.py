"""rangekv.v1.Meta served by a metarange replica.

Writes (intents, resolves, heartbeats, id allocation) go through the meta
raft group on its leader; a follower answers UNAVAILABLE with a NotLeaderError
naming the leader. Lookups in INCONSISTENT mode are served by any replica from
its applied state (so they keep answering while the group elects); CONSISTENT
lookups take the lease / read-index path on the leader, and return intents
too when asked (`include_intents`: what a gateway re-reads after a descriptor
proved wrong). Errors are raised as
RangeKVError and mapped to gRPC statuses once, by the server's interceptor.
"""

from __future__ import annotations

from typing import Any, Protocol

import grpc
from google.protobuf import duration_pb2

from rangekv.common import errors as E
from rangekv.common.clock import Clock
from rangekv.domain.descriptor_txn import ResolveIntent, WriteIntent
from rangekv.domain.txn import TxnStatus
from rangekv.metarange import reads
from rangekv.metarange.commands import AllocateIds, Command, Heartbeat, SetNodeState
from rangekv.metarange.keys import META_GROUP_ID
from rangekv.metarange.reads import LookupMode
from rangekv.metarange.records import IdKind, NodeDescriptor, NodeRecord, NodeState
from rangekv.metarange.replica import MetaCounters
from rangekv.metarange.state import MetaStateMachine, meta_spans
from rangekv.replication.checksum import checksum_off_loop, state_checksum
from rangekv.replication.state_engine import StateEngine
from rangekv.v1 import meta_pb2, meta_pb2_grpc

__all__ = ["MAX_LIST", "MAX_PREFETCH", "MetaBackend", "MetaService"]

MAX_PREFETCH = 1000
MAX_LIST = 10_000
#: Range ids a DecommissionResponse lists (the count is always complete).
MAX_LISTED_RANGES = 100


class MetaBackend(Protocol):
    """A replica of the meta range, as the service sees it (`replica.MetaHost`;
    `local.LocalMeta` is its in-memory twin)."""

    counters: MetaCounters

    @property
    def state_engine(self) -> StateEngine: ...

    async def execute(self, cmd: Command) -> Any:
        """Apply `cmd` through the meta range; raise its refusal."""
        ...

    async def read_point(self, consistent: bool) -> None:
        """Return once a consistent read may be served here (a no-op when not)."""
        ...

    def leader(self) -> tuple[int, str]:
        """The leader this replica believes in: (node id, address)."""
        ...


class MetaService(meta_pb2_grpc.MetaServicer):
    def __init__(
        self, backend: MetaBackend, *, clock: Clock, liveness_ttl_ns: int = 10_000_000_000
    ) -> None:
        self._backend = backend
        self._ttl = liveness_ttl_ns
        self._clock = clock

    async def LookupRange(
        self, request: meta_pb2.LookupRangeRequest, context: grpc.aio.ServicerContext
    ) -> meta_pb2.LookupRangeResponse:
        if not 0 <= request.prefetch <= MAX_PREFETCH:
            raise E.InvalidArgument("prefetch", f"must be in [0, {MAX_PREFETCH}]")
        mode = LookupMode.from_wire(request.mode)
        await self._backend.read_point(mode == LookupMode.CONSISTENT)
        self._backend.counters.lookups[mode.name.lower()] += 1
        result = MetaStateMachine.lookup(
            self._backend.state_engine,
            request.key,
            request.prefetch,
            mode,
            request.include_intents,
        )
        return result.to_lookup_proto()

    async def ListRanges(
        self, request: meta_pb2.ListRangesRequest, context: grpc.aio.ServicerContext
    ) -> meta_pb2.ListRangesResponse:
        if not 0 <= request.limit <= MAX_LIST:
            raise E.InvalidArgument("limit", f"must be in [0, {MAX_LIST}]")
        await self._backend.read_point(not request.include_intents)
        result = MetaStateMachine.list_ranges(
            self._backend.state_engine,
            request.start_key,
            request.limit or MAX_LIST,
            request.include_intents,
        )
        return result.to_list_proto()

    async def WriteIntent(
        self, request: meta_pb2.WriteIntentRequest, context: grpc.aio.ServicerContext
    ) -> meta_pb2.WriteIntentResponse:
        result = await self._backend.execute(WriteIntent.from_request(request))
        return meta_pb2.WriteIntentResponse(meta_key=result.meta_key)

    async def ResolveIntent(
        self, request: meta_pb2.ResolveIntentRequest, context: grpc.aio.ServicerContext
    ) -> meta_pb2.ResolveIntentResponse:
        try:
            status = TxnStatus(request.status)
        except ValueError:
            raise E.InvalidArgument("status", f"unknown txn status {request.status}") from None
        cmd = ResolveIntent(request.meta_key, request.txn_id, status)
        result = await self._backend.execute(cmd)
        return meta_pb2.ResolveIntentResponse(resolved=result.resolved)

    async def AllocateIds(
        self, request: meta_pb2.AllocateIdsRequest, context: grpc.aio.ServicerContext
    ) -> meta_pb2.AllocateIdsResponse:
        if request.kind not in (meta_pb2.ID_KIND_RANGE, meta_pb2.ID_KIND_NODE):
            raise E.InvalidArgument("kind", "must be ID_KIND_RANGE or ID_KIND_NODE")
        # Bootstrap reserves the first range's ids. A leader that has applied it
        # proposes allocations after it in the log, so they can never collide.
        if MetaStateMachine.first_range(self._backend.state_engine) is None:
            raise E.Unavailable("the cluster is not bootstrapped yet", retry_after=0.5)
        cmd = AllocateIds(IdKind(request.kind), request.count or 1)
        result = await self._backend.execute(cmd)
        return meta_pb2.AllocateIdsResponse(first=result.first, count=result.count)

    async def Heartbeat(
        self, request: meta_pb2.HeartbeatRequest, context: grpc.aio.ServicerContext
    ) -> meta_pb2.HeartbeatResponse:
        cmd = Heartbeat(NodeDescriptor.from_proto(request.node), self._clock.wall_ns())
        await self._backend.execute(cmd)
        ttl = duration_pb2.Duration()
        ttl.FromNanoseconds(self._ttl)
        return meta_pb2.HeartbeatResponse(liveness_ttl=ttl)

    async def ListNodes(
        self, request: meta_pb2.ListNodesRequest, context: grpc.aio.ServicerContext
    ) -> meta_pb2.ListNodesResponse:
        statuses = MetaStateMachine.list_nodes(
            self._backend.state_engine, self._clock.wall_ns(), self._ttl
        )
        return meta_pb2.ListNodesResponse(nodes=[s.to_proto() for s in statuses])

    async def ClusterInfo(
        self, request: meta_pb2.ClusterInfoRequest, context: grpc.aio.ServicerContext
    ) -> meta_pb2.ClusterInfoResponse:
        lead, address = self._backend.leader()
        first = MetaStateMachine.first_range(self._backend.state_engine)
        resp = meta_pb2.ClusterInfoResponse(
            bootstrapped=first is not None, leader_node_id=lead, leader_address=address
        )
        if first is not None:
            resp.first_range.CopyFrom(first.to_proto())
        if request.checksum:
            engine = self._backend.state_engine
            found = await checksum_off_loop(
                lambda: state_checksum(engine, META_GROUP_ID, lambda _: meta_spans())
            )
            if found is not None:
                resp.checksum.CopyFrom(found.to_proto())
        return resp

    # --- decommissioning ------------------------------------------------------------------

    def _node(self, node_id: int) -> NodeRecord:
        if node_id <= 0:
            raise E.InvalidArgument("node_id", "must be positive")
        record = reads.get_node(self._backend.state_engine, node_id)
        if record is None:
            raise E.NotFound(f"node {node_id} is not in the store registry")
        return record

    async def Decommission(
        self, request: meta_pb2.DecommissionRequest, context: grpc.aio.ServicerContext
    ) -> meta_pb2.DecommissionResponse:
        """Start (ACTIVE -> DECOMMISSIONING) or finish (-> DECOMMISSIONED once no
        range names the node) a decommission, and say how far it is. Writes only
        when the state moves; the finishing check is repeated at apply time."""
        replica = self._backend
        await replica.read_point(True)
        record = self._node(request.node_id)
        if record.state is NodeState.ACTIVE:
            await replica.execute(SetNodeState(request.node_id, NodeState.DECOMMISSIONING))
        left = reads.ranges_on_node(self._backend.state_engine, request.node_id)
        record = self._node(request.node_id)
        if record.state is NodeState.DECOMMISSIONING and not left:
            try:
                await replica.execute(SetNodeState(request.node_id, NodeState.DECOMMISSIONED))
            except E.FailedPrecondition:  # a range took a replica there meanwhile
                left = reads.ranges_on_node(self._backend.state_engine, request.node_id)
            record = self._node(request.node_id)
        return meta_pb2.DecommissionResponse(
            node=record.status(self._clock.wall_ns(), self._ttl).to_proto(),
            replicas=len(left),
            range_ids=left[:MAX_LISTED_RANGES],
        )

    async def Recommission(
        self, request: meta_pb2.RecommissionRequest, context: grpc.aio.ServicerContext
    ) -> meta_pb2.RecommissionResponse:
        replica = self._backend
        await replica.read_point(True)
        self._node(request.node_id)
        result = await replica.execute(SetNodeState(request.node_id, NodeState.ACTIVE))
        status = result.record.status(self._clock.wall_ns(), self._ttl)
        return meta_pb2.RecommissionResponse(node=status.to_proto())
