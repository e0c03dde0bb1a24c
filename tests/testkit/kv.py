"""The public KV API through a cluster's gateways, the way any client uses it.

Stubs to every gateway, scans with all their chunks, pages of scans, the
structural checks a scan result must pass (strictly ordered: no key twice,
none out of order), and a call's gRPC error as a value to assert on.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import AsyncIterator, Awaitable, Iterable
from typing import Any

import grpc

from rangekv.metarange.client import MetaClient
from rangekv.v1 import kv_pb2, kv_pb2_grpc
from testkit.cluster import Cluster

__all__ = [
    "CLIENT_TIMEOUT",
    "assert_strictly_ordered",
    "check_data",
    "get",
    "kv_stubs",
    "load",
    "meta_client",
    "ordering_problem",
    "paged_scan",
    "put",
    "rpc_error",
    "scan_keys",
    "scan_rows",
]

#: A client's deadline: above the gateway's own request timeout (10 s), so it answers first.
CLIENT_TIMEOUT = 15.0


@contextlib.asynccontextmanager
async def kv_stubs(cluster: Cluster) -> AsyncIterator[list[kv_pb2_grpc.KVStub]]:
    """A KV stub per gateway (as the `admin` client), closed afterwards."""
    channels = [cluster.client_channels()(g.address) for g in cluster.gateways]
    try:
        yield [kv_pb2_grpc.KVStub(ch) for ch in channels]
    finally:
        for ch in channels:
            await ch.close()


@contextlib.asynccontextmanager
async def meta_client(cluster: Cluster) -> AsyncIterator[MetaClient]:
    """A MetaClient over the cluster's meta range (as a node), closed afterwards."""
    client = MetaClient(cluster.meta_addrs, channels=cluster.node_channels())
    try:
        yield client
    finally:
        await client.close()


async def put(kv: kv_pb2_grpc.KVStub, key: bytes, value: bytes) -> None:
    await kv.Put(kv_pb2.PutRequest(key=key, value=value), timeout=CLIENT_TIMEOUT)


async def get(kv: kv_pb2_grpc.KVStub, key: bytes) -> bytes | None:
    got = await kv.Get(kv_pb2.GetRequest(key=key), timeout=CLIENT_TIMEOUT)
    return got.kv.value if got.found else None


async def load(
    kv: kv_pb2_grpc.KVStub, rows: Iterable[tuple[bytes, bytes]], per_batch: int = 500
) -> None:
    """Write `rows` with Batch calls of `per_batch` puts each."""
    item = kv_pb2.BatchRequestItem
    todo = list(rows)
    for i in range(0, len(todo), per_batch):
        requests = [item(put=kv_pb2.PutRequest(key=k, value=v)) for k, v in todo[i : i + per_batch]]
        await kv.Batch(kv_pb2.BatchRequest(requests=requests), timeout=CLIENT_TIMEOUT)


async def scan_rows(
    kv: kv_pb2_grpc.KVStub,
    start: bytes = b"",
    end: bytes = b"",
    limit: int = 0,
    into: list[tuple[bytes, bytes]] | None = None,
) -> list[tuple[bytes, bytes]]:
    """One Scan call, all its chunks concatenated; with `into`, rows are appended there
    as they arrive (so a caller that sees an error can still check what came first)."""
    out: list[tuple[bytes, bytes]] = [] if into is None else into
    call = kv.Scan(
        kv_pb2.ScanRequest(start_key=start, end_key=end, limit=limit), timeout=CLIENT_TIMEOUT
    )
    async for resp in call:
        out.extend((kv_.key, kv_.value) for kv_ in resp.kvs)
    return out


async def scan_keys(
    kv: kv_pb2_grpc.KVStub, start: bytes = b"", end: bytes = b"", limit: int = 0
) -> list[bytes]:
    """The keys of one Scan call."""
    return [k for k, _ in await scan_rows(kv, start, end, limit)]


async def paged_scan(
    kv: kv_pb2_grpc.KVStub, start: bytes, end: bytes, page: int, into: list[bytes]
) -> None:
    """Page through [start, end) with Scan(limit=page), appending keys to `into` as they
    arrive (so a caller that sees an error can still check what came before it)."""
    cursor = start
    while True:
        rows = await scan_rows(kv, cursor, end, page)
        into.extend(k for k, _ in rows)
        if len(rows) < page:
            return
        cursor = rows[-1][0] + b"\x00"


async def rpc_error(call: Awaitable[Any]) -> grpc.aio.AioRpcError | None:
    """None if `call` succeeded, else its error (for asserting on status codes)."""
    try:
        await call
    except grpc.aio.AioRpcError as exc:
        return exc
    return None


def ordering_problem(keys: list[bytes]) -> str | None:
    """What is wrong with the order of a scan's keys (a key twice or out of order), if anything."""
    for a, b in itertools.pairwise(keys):
        if not a < b:
            return f"{b!r} after {a!r} (a key twice or out of order)"
    return None


def assert_strictly_ordered(keys: list[bytes], what: str) -> None:
    problem = ordering_problem(keys)
    assert problem is None, f"{what}: {problem}"


async def check_data(kv: kv_pb2_grpc.KVStub, data: dict[bytes, bytes]) -> None:
    """Every key reads back its value, and one scan returns each key exactly once."""
    for key, value in data.items():
        assert await get(kv, key) == value, f"{key!r} lost"
    keys = await scan_keys(kv)
    assert keys == sorted(set(keys)), "a scan returned a key twice or out of order"
    assert set(data) <= set(keys)
