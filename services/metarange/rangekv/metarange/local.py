"""The in-memory twins of the meta range: `LocalMeta` and `MemoryMetaClient`.

`LocalMeta` is a meta range of one replica with no raft: a command is applied
by the real `MetaStateMachine` into a state engine (on a simulated disk by
default) the moment it is executed, and every read is consistent.
`MemoryMetaClient` is the `MetaApi` twin of `client.MetaClient`: its calls go
through the real `MetaService` handlers over a `LocalMeta`, so validation,
refusals and answers are exactly the service's -- only raft, the network and
gRPC are missing. Tests and simulations of the storage nodes and the gateway
use it where the meta range is not what they test.
"""

from __future__ import annotations

from typing import Any

from rangekv.common.clock import Clock
from rangekv.metarange.commands import Command
from rangekv.metarange.replica import MetaCounters
from rangekv.metarange.service import MetaService
from rangekv.metarange.state import MetaStateMachine
from rangekv.replication.memory_kv import MemoryDisk
from rangekv.replication.state_engine import StateEngine
from rangekv.replication.sync_mode import FsmSyncMode
from rangekv.v1 import meta_pb2

__all__ = ["LocalMeta", "MemoryMetaClient"]


class LocalMeta:
    """A `MetaBackend` of one replica, no raft (see the module docstring)."""

    def __init__(self, engine: StateEngine | None = None) -> None:
        self._engine = (
            engine if engine is not None else StateEngine.in_memory(MemoryDisk(), FsmSyncMode.SYNC)
        )
        self.state = MetaStateMachine()
        self.counters = MetaCounters()
        self.commands = 0

    @property
    def state_engine(self) -> StateEngine:
        return self._engine

    async def execute(self, cmd: Command) -> Any:
        batch = self._engine.new_batch()
        result = self.state.execute(cmd, batch)  # raises the refusal, having written nothing
        self._engine.commit(batch)
        self.commands += 1
        return result

    async def read_point(self, consistent: bool) -> None:
        """Every read of a single replica with no log is consistent."""

    def leader(self) -> tuple[int, str]:
        return 1, "local"


class MemoryMetaClient:
    """The `MetaApi` over a `LocalMeta`, through the real service handlers."""

    def __init__(self, clock: Clock, backend: LocalMeta | None = None) -> None:
        self.backend = backend if backend is not None else LocalMeta()
        self.service = MetaService(self.backend, clock=clock)

    async def lookup_range(
        self,
        key: bytes,
        *,
        prefetch: int = 8,
        consistent: bool = False,
        include_intents: bool = False,
        timeout: float | None = None,
    ) -> meta_pb2.LookupRangeResponse:
        mode = meta_pb2.LOOKUP_MODE_CONSISTENT if consistent else meta_pb2.LOOKUP_MODE_INCONSISTENT
        req = meta_pb2.LookupRangeRequest(
            key=key, prefetch=prefetch, mode=mode, include_intents=include_intents
        )
        return await self.service.LookupRange(req, None)  # type: ignore[arg-type]

    async def list_ranges(
        self, start_key: bytes = b"", limit: int = 0, include_intents: bool = False
    ) -> meta_pb2.ListRangesResponse:
        req = meta_pb2.ListRangesRequest(
            start_key=start_key, limit=limit, include_intents=include_intents
        )
        return await self.service.ListRanges(req, None)  # type: ignore[arg-type]

    async def write_intent(self, req: meta_pb2.WriteIntentRequest) -> meta_pb2.WriteIntentResponse:
        return await self.service.WriteIntent(req, None)  # type: ignore[arg-type]

    async def resolve_intent(
        self, meta_key: bytes, txn_id: bytes, status: int
    ) -> meta_pb2.ResolveIntentResponse:
        req = meta_pb2.ResolveIntentRequest(meta_key=meta_key, txn_id=txn_id, status=status)  # type: ignore[arg-type]
        return await self.service.ResolveIntent(req, None)  # type: ignore[arg-type]

    async def allocate_ids(self, kind: int, count: int = 1) -> meta_pb2.AllocateIdsResponse:
        req = meta_pb2.AllocateIdsRequest(kind=kind, count=count)  # type: ignore[arg-type]
        return await self.service.AllocateIds(req, None)  # type: ignore[arg-type]

    async def heartbeat(
        self, node_id: int, address: str, metrics_address: str = ""
    ) -> meta_pb2.HeartbeatResponse:
        req = meta_pb2.HeartbeatRequest()
        req.node.node_id = node_id
        req.node.address = address
        req.node.metrics_address = metrics_address
        return await self.service.Heartbeat(req, None)  # type: ignore[arg-type]

    async def list_nodes(self) -> meta_pb2.ListNodesResponse:
        return await self.service.ListNodes(meta_pb2.ListNodesRequest(), None)  # type: ignore[arg-type]

    async def cluster_info(self) -> meta_pb2.ClusterInfoResponse:
        return await self.service.ClusterInfo(meta_pb2.ClusterInfoRequest(), None)  # type: ignore[arg-type]

    async def close(self) -> None:
        return None
