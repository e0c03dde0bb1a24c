"""DirectTransport: the gateway's routing in the client's process, no gateway hop.

The client runs what a gateway runs for it - the descriptor cache over the
meta range, the DistSender, the node streams that merge concurrent operations
into one batch per range - and runs each request through the same
``KVService.serve`` the gateway's KV/Stream uses: the same validation,
admission, routing, retries and errors, one network hop fewer.

What it costs: the client process does the gateway's work (its CPU is the
gateway's), and it speaks the cluster's internal APIs (meta lookups, replica
batches, transaction pushes), which only a *node* certificate may call. So
this route is for trusted Python processes next to the cluster; anything else
goes through a gateway.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from rangekv.common import errors as E
from rangekv.common.server import internal_message
from rangekv.common.tls import ChannelOpener
from rangekv.gateway.kv_service import KVService
from rangekv.gateway.main import GatewayConfig, build
from rangekv.gateway.node_client import NodeClients
from rangekv.metarange.client import MetaClient
from rangekv.v1 import kv_pb2


class DirectTransport:
    """KVTransport that routes in-process (see the module docstring)."""

    def __init__(self, service: KVService, meta: MetaClient, nodes: NodeClients) -> None:
        self.service = service
        self._meta = meta
        self._nodes = nodes

    @staticmethod
    def open(
        meta_addrs: str, channels: ChannelOpener, *, request_timeout: float = 10.0
    ) -> DirectTransport:
        """Routing over the meta range at ``meta_addrs`` (HOST:PORT,...); ``channels``
        dial the meta replicas and the nodes (a node identity, or plaintext)."""
        cfg = GatewayConfig(meta_addrs=meta_addrs, request_timeout=request_timeout)
        service, meta, nodes = build(cfg, None, channels)
        return DirectTransport(service, meta, nodes)

    async def call(self, kind: str, message: Any, timeout: float) -> Any:
        try:
            return await self.service.serve(kind, message, timeout)
        except E.RangeKVError:
            raise
        except Exception as exc:  # a bug: say where, as the gateway would
            raise E.InternalError(internal_message(f"direct {kind}", exc)) from exc

    async def scan(
        self, request: kv_pb2.ScanRequest, timeout: float
    ) -> AsyncIterator[kv_pb2.ScanResponse]:
        async for chunk in self.service.scan(request, timeout):
            yield chunk

    async def close(self) -> None:
        await self._nodes.close()
        await self._meta.close()


__all__ = ["DirectTransport"]
