"""What `rangekv bench`'s closed loops call: one small interface, three ways to rangekv.

- ``unary``: one gRPC call per operation (KV/Get, KV/Put) on a plain stub: what
  any gRPC client in any language does;
- ``stream``: rangekv.client through a gateway, every operation a request on
  the shared KV/Stream of its connection;
- ``direct``: rangekv.client routing in this process straight to the
  leaseholders (no gateway; needs the meta range's addresses and a node identity).

The loops see only :class:`BenchOps`, so the three are measured the same way
(benchmarks/compare_etcd.py adds etcd behind the same interface). A failed
operation raises; :func:`error_code` names its status code.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import grpc

from rangekv.client import Client, ClientConfig, Put, connect
from rangekv.common import errors as E
from rangekv.common.config import SecurityConfig
from rangekv.common.tls import ChannelOpener
from rangekv.v1 import kv_pb2, kv_pb2_grpc

#: The ways `rangekv bench --client` can reach the cluster.
CLIENTS = ("unary", "stream", "direct")

#: Options of the unary path's channels: one TCP connection per channel.
UNARY_CHANNEL_OPTIONS = (("grpc.use_local_subchannel_pool", 1),)


class BenchOps(Protocol):
    """The operations a closed loop issues; each raises on failure."""

    async def get(self, key: bytes, timeout: float) -> None: ...

    async def put(self, key: bytes, value: bytes, timeout: float) -> None: ...

    async def put_many(self, keys: Sequence[bytes], value: bytes, timeout: float) -> None:
        """Write every key (the preload before a read workload)."""
        ...


def error_code(exc: BaseException) -> str | None:
    """The status code name of a failed operation (None: not a failure of the call)."""
    if isinstance(exc, grpc.aio.AioRpcError):
        return exc.code().name
    if isinstance(exc, E.RangeKVError):
        return exc.code.name
    return None


class UnaryOps:
    """One unary call per operation on ``stub``."""

    def __init__(self, stub: kv_pb2_grpc.KVStub) -> None:
        self._stub = stub

    async def get(self, key: bytes, timeout: float) -> None:
        await self._stub.Get(kv_pb2.GetRequest(key=key), timeout=timeout)

    async def put(self, key: bytes, value: bytes, timeout: float) -> None:
        await self._stub.Put(kv_pb2.PutRequest(key=key, value=value), timeout=timeout)

    async def put_many(self, keys: Sequence[bytes], value: bytes, timeout: float) -> None:
        items = [kv_pb2.BatchRequestItem(put=kv_pb2.PutRequest(key=k, value=value)) for k in keys]
        await self._stub.Batch(kv_pb2.BatchRequest(requests=items), timeout=timeout)


class ClientOps:
    """Operations through a rangekv.client.Client (stream or direct route)."""

    def __init__(self, client: Client) -> None:
        self.client = client

    async def get(self, key: bytes, timeout: float) -> None:
        await self.client.get(key, timeout=timeout)

    async def put(self, key: bytes, value: bytes, timeout: float) -> None:
        await self.client.put(key, value, timeout=timeout)

    async def put_many(self, keys: Sequence[bytes], value: bytes, timeout: float) -> None:
        await self.client.batch([Put(k, value) for k in keys], timeout=timeout)


async def open_client_ops(
    kind: str,
    *,
    addr: str,
    meta_addrs: str,
    connections: int,
    timeout: float,
    security: SecurityConfig,
    client_name: str | None,
    channels: ChannelOpener | None = None,
) -> ClientOps:
    """A connected ClientOps for ``kind`` ``stream`` or ``direct``."""
    config = ClientConfig(
        addr=addr,
        route="direct" if kind == "direct" else "gateway",
        meta_addrs=meta_addrs,
        connections=connections,
        timeout=timeout,
    )
    client = await connect(
        config,
        security,
        client_name,
        channels=channels,
        ready_timeout=timeout if kind == "stream" else None,
    )
    return ClientOps(client)


__all__ = [
    "CLIENTS",
    "UNARY_CHANNEL_OPTIONS",
    "BenchOps",
    "ClientOps",
    "UnaryOps",
    "error_code",
    "open_client_ops",
]
