"""rangekv.v1.Admin: the operator API, served by every gateway next to KV.

A thin adapter: each call gets a deadline (the caller's, capped by the
gateway's request timeout) and is handed to :class:`ClusterAdmin`, which
reads the meta range and asks the storage nodes. Its RangeKVErrors become
gRPC statuses once, in the server's interceptor, like the KV API's.

Decommission and Recommission are carried out by the cluster's decommission
mechanism (`rangekv.metarange.client`), handed in as `DecommissionFn` /
`RecommissionFn`; without them they answer UNIMPLEMENTED with a message saying so.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import grpc

from rangekv.common import errors as E
from rangekv.gateway.cluster_admin import ClusterAdmin
from rangekv.v1 import admin_pb2, admin_pb2_grpc

ADMIN_SERVICE = admin_pb2.DESCRIPTOR.services_by_name["Admin"].full_name

DecommissionFn = Callable[
    [admin_pb2.AdminDecommissionRequest, float], Awaitable[admin_pb2.AdminDecommissionResponse]
]
"""Drains a node within a deadline in seconds (the cluster's decommission mechanism)."""

RecommissionFn = Callable[
    [admin_pb2.AdminRecommissionRequest, float], Awaitable[admin_pb2.AdminRecommissionResponse]
]
"""Takes a node still decommissioning back, within a deadline in seconds."""


class AdminService(admin_pb2_grpc.AdminServicer):
    def __init__(
        self,
        admin: ClusterAdmin,
        *,
        request_timeout: float,
        decommission: DecommissionFn | None = None,
        recommission: RecommissionFn | None = None,
    ) -> None:
        self._admin = admin
        self._request_timeout = request_timeout
        self._decommission = decommission
        self._recommission = recommission

    def _timeout(self, context: grpc.aio.ServicerContext, calls: int = 1) -> float:
        """The request's budget: `calls` request timeouts (a call made of several
        node calls, e.g. a split at several keys), within the client's deadline."""
        budget = self._request_timeout * max(1, calls)
        remaining = context.time_remaining()
        if remaining is None:
            return budget
        return max(0.0, min(budget, remaining))

    async def ListRanges(
        self, request: admin_pb2.AdminListRangesRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.AdminListRangesResponse:
        return await self._admin.list_ranges(request, self._timeout(context))

    async def ListNodes(
        self, request: admin_pb2.AdminListNodesRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.AdminListNodesResponse:
        return await self._admin.list_nodes(request, self._timeout(context))

    async def SplitRange(
        self, request: admin_pb2.AdminSplitRangeRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.AdminSplitRangeResponse:
        calls = 1 + len(request.more_split_keys)
        return await self._admin.split_range(request, self._timeout(context, calls))

    async def TransferLease(
        self, request: admin_pb2.AdminTransferLeaseRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.AdminTransferLeaseResponse:
        return await self._admin.transfer_lease(request, self._timeout(context))

    async def ChangeReplicas(
        self, request: admin_pb2.AdminChangeReplicasRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.AdminChangeReplicasResponse:
        return await self._admin.change_replicas(request, self._timeout(context))

    async def Decommission(
        self, request: admin_pb2.AdminDecommissionRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.AdminDecommissionResponse:
        return await decommission(self._decommission, request, self._timeout(context))

    async def Recommission(
        self, request: admin_pb2.AdminRecommissionRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.AdminRecommissionResponse:
        return await recommission(self._recommission, request, self._timeout(context))


async def decommission(
    fn: DecommissionFn | None, request: admin_pb2.AdminDecommissionRequest, timeout: float
) -> admin_pb2.AdminDecommissionResponse:
    """Validate, then drain the node with `fn`, or say plainly that this version cannot."""
    if not request.node_id:
        raise E.InvalidArgument("node_id", "must not be 0")
    if fn is None:
        raise E.Unimplemented(
            f"decommission of node {request.node_id} is not available in this version "
            "(the node-draining mechanism is not wired into the Admin API yet); "
            "move its replicas off with change-replicas"
        )
    return await fn(request, timeout)


async def recommission(
    fn: RecommissionFn | None, request: admin_pb2.AdminRecommissionRequest, timeout: float
) -> admin_pb2.AdminRecommissionResponse:
    """Validate, then take the node back with `fn`, or say plainly that this version cannot."""
    if not request.node_id:
        raise E.InvalidArgument("node_id", "must not be 0")
    if fn is None:
        raise E.Unimplemented(f"recommission of node {request.node_id} is not available here")
    return await fn(request, timeout)


__all__ = [
    "ADMIN_SERVICE",
    "AdminService",
    "DecommissionFn",
    "RecommissionFn",
    "decommission",
    "recommission",
]
