"""A gateway inside a storage node's process: the KV API on the node's own port.

The same parts as a standalone gateway (`rangekv.gateway.main.build`: meta
client, descriptor cache, DistSender, KV service), with one difference: batches
for the node it runs in are handed to that node's Replica service in process
(`NodeClients.serve_locally`), so a request sent to its range's leaseholder
costs one gRPC hop instead of two. The node decides when to start one and
which address is its own (the storage node's side of this seam is
`rangekv.raftnode.frontend`; the `rangekv raftnode` verb joins the two).

No Admin API here: operators keep using a gateway's.
"""

from __future__ import annotations

import logging

import grpc

from rangekv.common.frontend import FrontendContext
from rangekv.gateway.main import GatewayConfig, build
from rangekv.gateway.node_client import LocalBatchHandler, LocalStream
from rangekv.v1 import kv_pb2_grpc

log = logging.getLogger(__name__)


class EmbeddedGateway:
    """The KV API of one storage node (a `rangekv.raftnode.frontend.Frontend`)."""

    service_names: tuple[str, ...] = ("rangekv.v1.KV",)

    def __init__(self, ctx: FrontendContext) -> None:
        """Settings the node does not give are a standalone gateway's defaults."""
        self.config = GatewayConfig(
            meta_addrs=ctx.meta_addrs,
            max_key_bytes=ctx.max_key_bytes,
            max_value_bytes=ctx.max_value_bytes,
            max_inflight_ops=ctx.max_inflight_ops,
            request_timeout=ctx.request_timeout,
            frame_gather_turns=ctx.frame_gather_turns,
        )
        self.kv, self._meta, self.nodes = build(
            self.config,
            ctx.telemetry,
            ctx.channels,
            max_message_bytes=ctx.max_message_bytes,
            clock=ctx.clock,
            rng=ctx.rng,
        )
        #: Batches for this node, once `serve_locally` said which address it is.
        self.local: LocalStream | None = None
        ctx.telemetry.observable_gauge(
            "rangekv_node_kv_batches",
            "Node batches of this node's KV API since start, by destination (monotonic): "
            "`local` served in process, `remote` sent to other nodes over gRPC.",
            self._batch_counts,
            labels=("to",),
        )

    def _batch_counts(self) -> dict[tuple[str, ...], float]:
        local = self.local.batches if self.local is not None else 0
        return {("local",): float(local), ("remote",): float(self.nodes.batches_sent - local)}

    def register(self, server: grpc.aio.Server) -> None:
        kv_pb2_grpc.add_KVServicer_to_server(self.kv, server)

    def serve_locally(self, address: str, batch: LocalBatchHandler) -> None:
        self.local = self.nodes.serve_locally(address, batch)

    async def close(self) -> None:
        await self.nodes.close()
        await self._meta.close()
