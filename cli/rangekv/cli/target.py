"""Where the admin verbs send their requests: a gateway's Admin API, or the meta range.

One address is enough: `--addr GATEWAY` (or RANGEKV_ADDR, or the default
127.0.0.1:50051) and every admin verb goes through `rangekv.v1.Admin` on that
gateway, e.g. through one Kubernetes port-forward. When `--addr` is not
given, two other ways, in order of precedence:

- `--meta HOST:PORT,...` (or RANGEKV_META): no gateway; the CLI runs the
  Admin API's own code (`rangekv.gateway.cluster_admin`) in its process
  against the meta range and the nodes, for when the gateways are down;
- `--data DIR` of a `rangekv dev` cluster: its gateway, from DATA/cluster.json.

Either way a verb sees one `AdminAPI`, the six Admin calls on request and
response protos, and errors arrive as gRPC errors (gateway) or RangeKVErrors
(in-process), both of which `rangekv.cli.kv.run` turns into one line.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Protocol

import grpc

from rangekv.cli.kv import DEFAULT_ADDR, CLIError, channel, channel_opener
from rangekv.gateway.admin_service import (
    DecommissionFn,
    RecommissionFn,
    decommission,
    recommission,
)
from rangekv.gateway.cluster_admin import ClusterAdmin, GrpcNodeAdmin
from rangekv.metarange.client import MetaClient, decommission_for_admin, recommission_for_admin
from rangekv.v1 import admin_pb2, admin_pb2_grpc, replica_pb2_grpc


class AdminAPI(Protocol):
    """The Admin API as a verb calls it (a gateway, or the same code in-process)."""

    async def list_ranges(
        self, req: admin_pb2.AdminListRangesRequest, timeout: float
    ) -> admin_pb2.AdminListRangesResponse: ...

    async def list_nodes(
        self, req: admin_pb2.AdminListNodesRequest, timeout: float
    ) -> admin_pb2.AdminListNodesResponse: ...

    async def split_range(
        self, req: admin_pb2.AdminSplitRangeRequest, timeout: float
    ) -> admin_pb2.AdminSplitRangeResponse: ...

    async def transfer_lease(
        self, req: admin_pb2.AdminTransferLeaseRequest, timeout: float
    ) -> admin_pb2.AdminTransferLeaseResponse: ...

    async def change_replicas(
        self, req: admin_pb2.AdminChangeReplicasRequest, timeout: float
    ) -> admin_pb2.AdminChangeReplicasResponse: ...

    async def decommission(
        self, req: admin_pb2.AdminDecommissionRequest, timeout: float
    ) -> admin_pb2.AdminDecommissionResponse: ...

    async def recommission(
        self, req: admin_pb2.AdminRecommissionRequest, timeout: float
    ) -> admin_pb2.AdminRecommissionResponse: ...


class GatewayAdmin:
    """`AdminAPI` over `rangekv.v1.Admin` on a gateway."""

    def __init__(self, ch: grpc.aio.Channel) -> None:
        self._stub = admin_pb2_grpc.AdminStub(ch)

    async def list_ranges(
        self, req: admin_pb2.AdminListRangesRequest, timeout: float
    ) -> admin_pb2.AdminListRangesResponse:
        return await self._stub.ListRanges(req, timeout=timeout)

    async def list_nodes(
        self, req: admin_pb2.AdminListNodesRequest, timeout: float
    ) -> admin_pb2.AdminListNodesResponse:
        return await self._stub.ListNodes(req, timeout=timeout)

    async def split_range(
        self, req: admin_pb2.AdminSplitRangeRequest, timeout: float
    ) -> admin_pb2.AdminSplitRangeResponse:
        return await self._stub.SplitRange(req, timeout=timeout)

    async def transfer_lease(
        self, req: admin_pb2.AdminTransferLeaseRequest, timeout: float
    ) -> admin_pb2.AdminTransferLeaseResponse:
        return await self._stub.TransferLease(req, timeout=timeout)

    async def change_replicas(
        self, req: admin_pb2.AdminChangeReplicasRequest, timeout: float
    ) -> admin_pb2.AdminChangeReplicasResponse:
        return await self._stub.ChangeReplicas(req, timeout=timeout)

    async def decommission(
        self, req: admin_pb2.AdminDecommissionRequest, timeout: float
    ) -> admin_pb2.AdminDecommissionResponse:
        return await self._stub.Decommission(req, timeout=timeout)

    async def recommission(
        self, req: admin_pb2.AdminRecommissionRequest, timeout: float
    ) -> admin_pb2.AdminRecommissionResponse:
        return await self._stub.Recommission(req, timeout=timeout)


class LocalAdmin:
    """`AdminAPI` run in this process against the meta range and the nodes (`--meta`)."""

    def __init__(
        self,
        admin: ClusterAdmin,
        decommission: DecommissionFn | None = None,
        recommission: RecommissionFn | None = None,
    ) -> None:
        self._admin = admin
        self._decommission = decommission
        self._recommission = recommission

    async def list_ranges(
        self, req: admin_pb2.AdminListRangesRequest, timeout: float
    ) -> admin_pb2.AdminListRangesResponse:
        return await self._admin.list_ranges(req, timeout)

    async def list_nodes(
        self, req: admin_pb2.AdminListNodesRequest, timeout: float
    ) -> admin_pb2.AdminListNodesResponse:
        return await self._admin.list_nodes(req, timeout)

    async def split_range(
        self, req: admin_pb2.AdminSplitRangeRequest, timeout: float
    ) -> admin_pb2.AdminSplitRangeResponse:
        return await self._admin.split_range(req, timeout)

    async def transfer_lease(
        self, req: admin_pb2.AdminTransferLeaseRequest, timeout: float
    ) -> admin_pb2.AdminTransferLeaseResponse:
        return await self._admin.transfer_lease(req, timeout)

    async def change_replicas(
        self, req: admin_pb2.AdminChangeReplicasRequest, timeout: float
    ) -> admin_pb2.AdminChangeReplicasResponse:
        return await self._admin.change_replicas(req, timeout)

    async def decommission(
        self, req: admin_pb2.AdminDecommissionRequest, timeout: float
    ) -> admin_pb2.AdminDecommissionResponse:
        return await decommission(self._decommission, req, timeout)

    async def recommission(
        self, req: admin_pb2.AdminRecommissionRequest, timeout: float
    ) -> admin_pb2.AdminRecommissionResponse:
        return await recommission(self._recommission, req, timeout)


def dev_gateway(data: str) -> str:
    """The gateway address a `rangekv dev` cluster keeps in DATA/cluster.json."""
    path = Path(data) / "cluster.json"
    try:
        raw = json.loads(path.read_text())
        return f"127.0.0.1:{int(raw['gateways'][0])}"
    except FileNotFoundError:
        raise CLIError(
            f"{path} does not exist: pass --addr GATEWAY (or --meta HOST:PORT,... for the "
            "meta range, or --data DIR of a `rangekv dev` cluster)"
        ) from None
    except (ValueError, KeyError, IndexError, TypeError) as exc:
        raise CLIError(f"{path} is not a rangekv dev cluster layout ({exc})") from None


def describe_target(args: argparse.Namespace) -> str:
    """Where the verb's requests go, for error lines: the gateway or the meta range."""
    if args.meta and not args.addr:
        return f"meta range {args.meta}"
    try:
        return gateway_address(args)
    except CLIError:  # the verb itself reports the bad --data, as its one error line
        return ""


def gateway_address(args: argparse.Namespace) -> str:
    if args.addr:
        return str(args.addr)
    if args.data:
        return dev_gateway(args.data)
    return os.environ.get("RANGEKV_ADDR", DEFAULT_ADDR)


@asynccontextmanager
async def admin_api(args: argparse.Namespace) -> AsyncIterator[AdminAPI]:
    """The Admin API the parsed `args` point at, open for the duration of the block."""
    if args.meta and not args.addr:
        addresses = [a.strip() for a in args.meta.split(",") if a.strip()]
        if not addresses:
            raise CLIError("--meta names no address", code=2)
        meta = MetaClient(
            addresses, timeout=args.timeout, channels=channel_opener(args, internal=True)
        )
        channels: dict[str, grpc.aio.Channel] = {}

        def stub(address: str) -> replica_pb2_grpc.ReplicaStub:
            if address not in channels:
                channels[address] = channel(args, address, internal=True)
            return replica_pb2_grpc.ReplicaStub(channels[address])

        try:
            yield LocalAdmin(
                ClusterAdmin(meta, GrpcNodeAdmin(stub)),
                decommission=functools.partial(decommission_for_admin, meta),
                recommission=functools.partial(recommission_for_admin, meta),
            )
        finally:
            await meta.close()
            for ch in channels.values():
                await ch.close()
        return
    async with channel(args, gateway_address(args)) as ch:
        yield GatewayAdmin(ch)


__all__ = [
    "AdminAPI",
    "GatewayAdmin",
    "LocalAdmin",
    "admin_api",
    "describe_target",
    "dev_gateway",
    "gateway_address",
]
