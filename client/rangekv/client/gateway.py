"""GatewayTransport: requests on KV/Stream over a few connections to one gateway.

Each connection is its own HTTP/2 connection (its own TCP socket) carrying one
long-lived KV/Stream at a time (rangekv.client.stream_conn). A request goes to
the connection with the fewest requests waiting, so that concurrent callers
keep sharing messages while load spreads. Scans use the server-streaming
KV/Scan call on the first connection (a scan is one call whatever its size).
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator
from typing import Any

import grpc

from rangekv.client.stream_conn import StreamCall, StreamConnection
from rangekv.common import errors as E
from rangekv.common.tls import ChannelOpener
from rangekv.v1 import kv_pb2, kv_pb2_grpc

CHANNEL_OPTIONS = (
    # One TCP connection per channel, even to the same address.
    ("grpc.use_local_subchannel_pool", 1),
    ("grpc.keepalive_time_ms", 20_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.max_receive_message_length", 64 << 20),
    ("grpc.max_send_message_length", 64 << 20),
)


class GatewayTransport:
    """KVTransport over KV/Stream to the gateway at ``address``."""

    def __init__(
        self,
        address: str,
        channels: ChannelOpener,
        *,
        connections: int = 1,
        max_inflight: int = 1000,
        gather_turns: int = 0,
    ) -> None:
        """`gather_turns`: see `rangekv.client.stream_conn` (gathering)."""
        if connections < 1:
            raise ValueError(f"connections must be >= 1, got {connections}")
        self.address = address
        self._channels = [channels(address, CHANNEL_OPTIONS) for _ in range(connections)]
        self._stubs = [kv_pb2_grpc.KVStub(ch) for ch in self._channels]
        self.connections = [
            StreamConnection(
                functools.partial(_open, stub),
                max_inflight=max_inflight,
                gather_turns=gather_turns,
            )
            for stub in self._stubs
        ]

    async def wait_ready(self, timeout: float) -> None:
        """Until every connection is up (raises Unavailable after ``timeout``)."""
        try:
            await asyncio.wait_for(
                asyncio.gather(*(ch.channel_ready() for ch in self._channels)), timeout
            )
        except TimeoutError:
            raise E.Unavailable(f"cannot reach the gateway at {self.address}") from None

    async def call(self, kind: str, message: Any, timeout: float) -> Any:
        conns = self.connections
        conn = conns[0] if len(conns) == 1 else min(conns, key=lambda c: c.waiting)
        return await conn.call(kind, message, timeout)

    async def scan(
        self, request: kv_pb2.ScanRequest, timeout: float
    ) -> AsyncIterator[kv_pb2.ScanResponse]:
        call = self._stubs[0].Scan(request)
        it = call.__aiter__()
        try:
            while True:
                try:
                    chunk = await asyncio.wait_for(it.__anext__(), timeout)
                except StopAsyncIteration:
                    return
                except TimeoutError:
                    raise E.DeadlineExceeded(
                        f"no scan answer within {timeout:g}s", E.WriteOutcome.UNSPECIFIED
                    ) from None
                except grpc.aio.AioRpcError as exc:
                    raise E.from_rpc_error(exc) from None
                yield chunk
        finally:
            call.cancel()

    async def close(self) -> None:
        for conn in self.connections:
            await conn.close()
        for ch in self._channels:
            await ch.close()


def _open(stub: kv_pb2_grpc.KVStub) -> StreamCall:
    call: StreamCall = stub.Stream()
    return call


__all__ = ["CHANNEL_OPTIONS", "GatewayTransport"]
