"""The seam for a public KV API served by a storage node itself.

Through a standalone gateway a request costs two gRPC hops: client -> gateway
-> leaseholder. A storage node can serve the KV API too (`--serve-kv`, on by
default): a request sent to the node that holds its range's lease then costs
one hop, and the node's own batches never touch gRPC (they are handed to its
Replica service in process). Requests for other nodes' ranges are routed as a
gateway routes them. The standalone gateway stays: it is what a client uses
that does not know (or care) where leases are.

A raftnode does not know how the KV API is built -- that is the gateway's job,
and a service imports no other service's internals. Whoever starts the node
(the `rangekv raftnode` verb) hands it a `FrontendFactory`; the node calls it
once with what a gateway needs (`FrontendContext`, in `rangekv.common.frontend`:
the one value both sides import), registers the returned
`Frontend` on its own gRPC server, and, once that server listens, tells it the
address the node is registered under and how to serve a Replica batch in
process (`Frontend.serve_locally`). Without a factory, or without
`--meta-addrs` (nothing to route with), the node serves no KV API.

Request flow, one line: client -> node's KV service -> DistSender -> this
node's Replica service in process, or another node over Replica.BatchFrames.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Protocol

import grpc

from rangekv.common.frontend import FrontendContext
from rangekv.v1 import replica_pb2

__all__ = ["Frontend", "FrontendContext", "FrontendFactory", "LocalBatch"]

#: Serves one Replica batch of this node, in process (`ReplicaService.serve_batch`).
LocalBatch = Callable[
    [replica_pb2.ReplicaBatchRequest], Awaitable[replica_pb2.ReplicaBatchResponse]
]


class Frontend(Protocol):
    """A KV API served on the node's port beside Replica and RaftTransport."""

    #: Full names of the gRPC services it adds (health and reflection list them).
    service_names: tuple[str, ...]

    def register(self, server: grpc.aio.Server) -> None:
        """Add its services to the node's server (before the server starts)."""
        ...

    def serve_locally(self, address: str, batch: LocalBatch) -> None:
        """From now on, batches for `address` (this node, as the store registry
        names it) go to `batch` in process."""
        ...

    async def close(self) -> None:
        """Release channels; called after the node's server stopped."""
        ...


FrontendFactory = Callable[[FrontendContext], Frontend]
