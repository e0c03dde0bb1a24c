"""A client of the meta range for gateways, storage nodes and the CLI.

`MetaApi` is what its users need of the meta range; `MetaClient` is the real
one: it knows the addresses of every metarange replica, remembers which one
led last, follows NotLeader hints at once, moves to the next replica when one
is unreachable, and gives up at the call's deadline. Inconsistent lookups go
to any replica (a follower answers them while the group elects).
`rangekv.metarange.local.memory_meta_client` builds its in-memory twin (this
client over the meta service's handlers in-process: no raft, no gRPC), for
tests and simulations.

Decommissioning a storage node (`decommission_node`) is here too, because
every caller (the CLI, the gateway's Admin API, a raftnode scaled away on
SIGTERM) runs the same loop. The decommission itself is driven by the meta
range's store registry, not by the node (`Meta.Decommission`): the node
becomes DECOMMISSIONING, every leaseholder's rebalancer moves its replicas and
leases elsewhere (`rangekv.raftnode.rebalancer.plan_action`), and once no
range names the node the registry marks it DECOMMISSIONED for good. The loop
only starts that and follows it to the end, so it works whether the node is
up, down, or is the process asking.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar

import grpc

from rangekv.common import errors as E
from rangekv.common.clock import Clock, SystemClock
from rangekv.common.tls import ChannelOpener, PlaintextChannels
from rangekv.metarange.records import NodeState
from rangekv.v1 import admin_pb2, meta_pb2, meta_pb2_grpc

T = TypeVar("T")

log = logging.getLogger(__name__)

CHANNEL_OPTIONS = (("grpc.keepalive_time_ms", 10_000), ("grpc.keepalive_timeout_ms", 5_000))


class MetaApi(Protocol):
    """The meta range, as gateways, storage nodes and the CLI use it. Errors are
    RangeKVErrors (NotLeader, Unavailable, ConditionFailed, ...)."""

    async def lookup_range(
        self,
        key: bytes,
        *,
        prefetch: int = 8,
        consistent: bool = False,
        include_intents: bool = False,
        timeout: float | None = None,
    ) -> meta_pb2.LookupRangeResponse: ...

    async def list_ranges(
        self, start_key: bytes = b"", limit: int = 0, include_intents: bool = False
    ) -> meta_pb2.ListRangesResponse: ...

    async def write_intent(
        self, req: meta_pb2.WriteIntentRequest
    ) -> meta_pb2.WriteIntentResponse: ...

    async def resolve_intent(
        self, meta_key: bytes, txn_id: bytes, status: int
    ) -> meta_pb2.ResolveIntentResponse: ...

    async def allocate_ids(self, kind: int, count: int = 1) -> meta_pb2.AllocateIdsResponse: ...

    async def heartbeat(
        self, node_id: int, address: str, metrics_address: str = ""
    ) -> meta_pb2.HeartbeatResponse: ...

    async def list_nodes(self) -> meta_pb2.ListNodesResponse: ...

    async def decommission(self, node_id: int) -> meta_pb2.DecommissionResponse: ...

    async def recommission(self, node_id: int) -> meta_pb2.RecommissionResponse: ...

    async def cluster_info(self) -> meta_pb2.ClusterInfoResponse: ...

    async def close(self) -> None: ...


class MetaClient:
    """The `MetaApi` over gRPC (see the module docstring)."""

    def __init__(
        self,
        addresses: Sequence[str],
        *,
        timeout: float = 5.0,
        rng: random.Random | None = None,
        clock: Clock | None = None,
        channels: ChannelOpener | None = None,
        stubs: Callable[[str], meta_pb2_grpc.MetaStub] | None = None,
    ) -> None:
        """``channels``: how replicas are dialled (TLS with this process's identity in a
        secure cluster; plaintext if None); ``clock`` and ``rng`` (which replica to
        try first) default to the system's; ``stubs``: how an address becomes a stub
        (over ``channels`` unless given: `local.memory_meta_client` serves in-process)."""
        if not addresses:
            raise ValueError("MetaClient needs at least one metarange address")
        self.addresses = list(addresses)
        self.timeout = timeout
        self._rng = rng if rng is not None else random.Random()
        self._clock: Clock = clock if clock is not None else SystemClock()
        #: How this client dials (shared with callers that reach the same cluster).
        self.opener: ChannelOpener = channels if channels is not None else PlaintextChannels()
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._stubs = stubs
        self._leader: str | None = None

    def _stub(self, address: str) -> meta_pb2_grpc.MetaStub:
        if self._stubs is not None:
            return self._stubs(address)
        ch = self._channels.get(address)
        if ch is None:
            ch = self.opener(address, CHANNEL_OPTIONS)
            self._channels[address] = ch
        return meta_pb2_grpc.MetaStub(ch)

    async def close(self) -> None:
        for ch in self._channels.values():
            await ch.close()
        self._channels.clear()

    async def _call(
        self,
        fn: Callable[[meta_pb2_grpc.MetaStub, float], Awaitable[T]],
        *,
        any_replica: bool = False,
        is_write: bool = False,
        timeout: float | None = None,
    ) -> T:
        deadline = self._clock.monotonic() + (timeout or self.timeout)
        order = self.addresses[:]
        self._rng.shuffle(order)
        if self._leader in order and not any_replica:
            order.remove(self._leader)
            order.insert(0, self._leader)
        attempt = 0
        backoff = 0.02
        last: E.RangeKVError | None = None
        while True:
            remaining = deadline - self._clock.monotonic()
            if remaining <= 0:
                raise E.Unavailable(
                    f"meta range unreachable: {last.message if last else 'no answer'}",
                    retry_after=0.5,
                    outcome=E.WriteOutcome.of(is_write),
                )
            address = order[attempt % len(order)]
            attempt += 1
            try:
                result = await fn(self._stub(address), min(remaining, self.timeout))
            except grpc.aio.AioRpcError as exc:
                err = E.from_rpc_error(exc, is_write=is_write)
                if isinstance(err, E.NotLeader):
                    last = err
                    if err.leader_address and err.leader_address in self.addresses:
                        self._leader = err.leader_address
                        order.remove(err.leader_address)
                        order.insert(attempt % len(order), err.leader_address)
                        continue  # follow the hint at once
                elif isinstance(err, E.Unavailable) and exc.code() in (
                    grpc.StatusCode.UNAVAILABLE,
                    grpc.StatusCode.DEADLINE_EXCEEDED,
                ):
                    # Unreachable replica or no quorum yet. A write sent to an
                    # unreachable replica never reached it; one that timed out may
                    # have: do not retry that.
                    if is_write and exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                        raise err from None
                    if is_write and err.outcome == E.WriteOutcome.UNKNOWN and _reached(exc):
                        raise err from None
                    last = err
                else:
                    raise err from None
                if attempt % len(order) == 0:
                    await self._clock.sleep(
                        min(backoff, max(0.0, deadline - self._clock.monotonic()))
                    )
                    backoff = min(backoff * 2, 0.5)
                continue
            if not any_replica:
                self._leader = address
            return result

    # --- the API ------------------------------------------------------------------------

    async def lookup_range(
        self,
        key: bytes,
        *,
        prefetch: int = 8,
        consistent: bool = False,
        include_intents: bool = False,
        timeout: float | None = None,
    ) -> meta_pb2.LookupRangeResponse:
        """Records covering `key` and `prefetch` following ones.

        INCONSISTENT (the default) asks any replica; `consistent` asks the
        leader (following NotLeader hints), and `include_intents` makes that
        read return intents as well. `timeout` bounds the call (default: the
        client's).
        """
        mode = meta_pb2.LOOKUP_MODE_CONSISTENT if consistent else meta_pb2.LOOKUP_MODE_INCONSISTENT
        req = meta_pb2.LookupRangeRequest(
            key=key, prefetch=prefetch, mode=mode, include_intents=include_intents
        )
        return await self._call(
            lambda s, t: s.LookupRange(req, timeout=t), any_replica=not consistent, timeout=timeout
        )

    async def list_ranges(
        self, start_key: bytes = b"", limit: int = 0, include_intents: bool = False
    ) -> meta_pb2.ListRangesResponse:
        req = meta_pb2.ListRangesRequest(
            start_key=start_key, limit=limit, include_intents=include_intents
        )
        return await self._call(lambda s, t: s.ListRanges(req, timeout=t))

    async def write_intent(self, req: meta_pb2.WriteIntentRequest) -> meta_pb2.WriteIntentResponse:
        return await self._call(lambda s, t: s.WriteIntent(req, timeout=t), is_write=True)

    async def resolve_intent(
        self, meta_key: bytes, txn_id: bytes, status: int
    ) -> meta_pb2.ResolveIntentResponse:
        req = meta_pb2.ResolveIntentRequest(meta_key=meta_key, txn_id=txn_id, status=status)  # type: ignore[arg-type]
        # Resolving is idempotent: retrying an unknown outcome is safe.
        return await self._call(lambda s, t: s.ResolveIntent(req, timeout=t))

    async def allocate_ids(self, kind: int, count: int = 1) -> meta_pb2.AllocateIdsResponse:
        req = meta_pb2.AllocateIdsRequest(kind=kind, count=count)  # type: ignore[arg-type]
        return await self._call(lambda s, t: s.AllocateIds(req, timeout=t), is_write=True)

    async def heartbeat(
        self, node_id: int, address: str, metrics_address: str = ""
    ) -> meta_pb2.HeartbeatResponse:
        req = meta_pb2.HeartbeatRequest()
        req.node.node_id = node_id
        req.node.address = address
        req.node.metrics_address = metrics_address
        # Heartbeats are idempotent upserts.
        return await self._call(lambda s, t: s.Heartbeat(req, timeout=t))

    async def list_nodes(self) -> meta_pb2.ListNodesResponse:
        return await self._call(
            lambda s, t: s.ListNodes(meta_pb2.ListNodesRequest(), timeout=t), any_replica=True
        )

    async def decommission(self, node_id: int) -> meta_pb2.DecommissionResponse:
        """Start or finish a node's decommission and read its progress (idempotent)."""
        req = meta_pb2.DecommissionRequest(node_id=node_id)
        return await self._call(lambda s, t: s.Decommission(req, timeout=t))

    async def recommission(self, node_id: int) -> meta_pb2.RecommissionResponse:
        req = meta_pb2.RecommissionRequest(node_id=node_id)
        return await self._call(lambda s, t: s.Recommission(req, timeout=t))

    async def cluster_info(self) -> meta_pb2.ClusterInfoResponse:
        return await self._call(
            lambda s, t: s.ClusterInfo(meta_pb2.ClusterInfoRequest(), timeout=t), any_replica=True
        )


def _reached(exc: grpc.aio.AioRpcError) -> bool:
    """Whether a failed call may have reached the server (connection failures did not)."""
    details = (exc.details() or "").lower()
    return not any(s in details for s in ("connect", "unreachable", "no route", "refused"))


@dataclass(frozen=True)
class DecommissionProgress:
    """How far a node's decommission is (one answer of Meta.Decommission)."""

    node_id: int
    state: NodeState
    live: bool
    #: Ranges that still name the node (committed descriptors and intents).
    replicas: int
    #: Some of those ranges (the registry lists at most 100).
    range_ids: tuple[int, ...]
    #: The registry entry as the meta range answered it.
    status: meta_pb2.NodeStatus

    @property
    def done(self) -> bool:
        return self.state is NodeState.DECOMMISSIONED

    @staticmethod
    def from_proto(resp: meta_pb2.DecommissionResponse) -> DecommissionProgress:
        return DecommissionProgress(
            node_id=resp.node.node.node_id,
            state=NodeState(resp.node.state or NodeState.ACTIVE),
            live=resp.node.live,
            replicas=resp.replicas,
            range_ids=tuple(resp.range_ids),
            status=resp.node,
        )

    def describe(self) -> str:
        if self.done:
            return f"node {self.node_id}: decommissioned"
        some = ", ".join(f"r{r}" for r in self.range_ids[:5])
        more = "" if len(self.range_ids) <= 5 else ", ..."
        return f"node {self.node_id}: {self.state.label}, {self.replicas} replica(s) left" + (
            f" ({some}{more})" if some else ""
        )


async def decommission_node(
    meta: MetaApi,
    node_id: int,
    *,
    wait: bool = True,
    timeout: float = 600.0,
    poll_interval: float = 1.0,
    on_progress: Callable[[DecommissionProgress], None] | None = None,
    monotonic: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> DecommissionProgress:
    """Decommission `node_id` and, with `wait`, follow it until DECOMMISSIONED.

    Idempotent: calling it for a node already leaving (or gone) just reports.
    Without `wait` it returns after the first answer (the move goes on in the
    cluster). Raises NotFound for an unknown node, and DeadlineExceeded if the
    node still holds replicas after `timeout` seconds (the decommission goes on;
    call again to keep following it). An unavailable meta range is retried
    until then. `on_progress` sees every answer.
    """
    deadline = monotonic() + timeout
    while True:
        try:
            progress = DecommissionProgress.from_proto(await meta.decommission(node_id))
        except E.Unavailable as exc:
            # The meta range is electing or unreachable for now: keep trying (the
            # call is idempotent) until the deadline, unless asked not to wait.
            if not wait or monotonic() >= deadline:
                raise
            log.info("decommission of node %d: meta range unavailable: %s", node_id, exc)
            await sleep(min(poll_interval, max(0.0, deadline - monotonic())))
            continue
        if on_progress is not None:
            on_progress(progress)
        if progress.done or not wait:
            return progress
        if monotonic() >= deadline:
            raise E.DeadlineExceeded(
                f"{progress.describe()} after {timeout:.0f}s; the decommission goes on "
                "in the cluster (is there a live node to take its replicas?)"
            )
        # Polling the registry: progress is made by the rebalancers, not by this call.
        await sleep(min(poll_interval, max(0.0, deadline - monotonic())))


async def decommission_for_admin(
    meta: MetaApi, request: admin_pb2.AdminDecommissionRequest, timeout: float
) -> admin_pb2.AdminDecommissionResponse:
    """`rangekv.v1.Admin/Decommission` (the gateway's DecommissionFn): start the
    decommission and follow it until it is done or the request's deadline is
    near, then answer how far it got (the move goes on; ask again to follow it)."""
    seen: list[DecommissionProgress] = []
    budget = max(0.0, timeout - min(1.0, timeout / 4))  # answer before the caller's deadline
    # Not done by then: the last progress is the answer.
    with contextlib.suppress(E.DeadlineExceeded):
        await decommission_node(
            meta, request.node_id, timeout=budget, poll_interval=0.5, on_progress=seen.append
        )
    last = seen[-1]
    return admin_pb2.AdminDecommissionResponse(status=last.status, replicas_remaining=last.replicas)


async def recommission_node(meta: MetaApi, node_id: int) -> meta_pb2.NodeStatus:
    """Take a DECOMMISSIONING node back to ACTIVE (FailedPrecondition once it is gone)."""
    return (await meta.recommission(node_id)).node


async def recommission_for_admin(
    meta: MetaApi, request: admin_pb2.AdminRecommissionRequest, timeout: float
) -> admin_pb2.AdminRecommissionResponse:
    """`rangekv.v1.Admin/Recommission` (the gateway's RecommissionFn)."""
    return admin_pb2.AdminRecommissionResponse(
        status=await recommission_node(meta, request.node_id)
    )


__all__ = [
    "DecommissionProgress",
    "MetaApi",
    "MetaClient",
    "decommission_for_admin",
    "decommission_node",
    "recommission_for_admin",
    "recommission_node",
]
