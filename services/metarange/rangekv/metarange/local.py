"""The in-memory twins of the meta range: `LocalMeta` and `memory_meta_client`.

`LocalMeta` is a meta range of one replica with no raft: a command is applied
by the real `MetaStateMachine` into a state engine (on a simulated disk by
default) the moment it is executed, and every read is consistent.
`memory_meta_client` builds the `MetaApi` twin: the real `client.MetaClient`
whose calls go to the real `MetaService` handlers over a `LocalMeta`, so
validation, refusals and answers are exactly the service's -- only raft, the
network and gRPC are missing. Tests and simulations of the storage nodes and the gateway
use it where the meta range is not what they test.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable
from typing import Any

from rangekv.common.clock import Clock
from rangekv.metarange.client import MetaClient
from rangekv.metarange.commands import Command
from rangekv.metarange.replica import MetaCounters
from rangekv.metarange.service import MetaService
from rangekv.metarange.state import MetaStateMachine
from rangekv.replication.memory_kv import MemoryDisk
from rangekv.replication.state_engine import StateEngine
from rangekv.replication.sync_mode import FsmSyncMode

__all__ = ["LocalMeta", "memory_meta_client"]


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


class _LocalStub:
    """A `MetaStub` whose calls are the service's handlers, in this process."""

    def __init__(self, service: MetaService) -> None:
        self._service = service

    def __getattr__(self, method: str) -> Callable[..., Awaitable[Any]]:
        handler = getattr(self._service, method)

        async def call(request: Any, timeout: float | None = None) -> Any:
            return await handler(request, None)

        return call


def memory_meta_client(clock: Clock, backend: LocalMeta | None = None) -> MetaClient:
    """A `MetaClient` answered by the real service handlers over `backend` (a fresh
    `LocalMeta` if None), in this process: the `MetaApi` twin."""
    service = MetaService(backend if backend is not None else LocalMeta(), clock=clock)
    stub = _LocalStub(service)
    return MetaClient(["local"], clock=clock, rng=random.Random(0), stubs=lambda _addr: stub)  # type: ignore[arg-type,return-value]
