"""rangekv.check.kv_client.recorded_scan: scans sent over real gRPC, recorded for the checker.

A small in-process KV server (real grpc.aio, real sockets) streams a dict
in pages; the test checks what a client records: the rows of every
streamed page as one scan, an unbounded span as ``end=None``, a scan cut
short by its limit as ending just after its last row, and a scan that
failed -- even after streaming some rows -- as FAIL.  The recorded
histories then go through the checker, which must accept the truthful
ones and reject one where the server answers from a stale copy.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc

from rangekv.check import HistoryRecorder, Operation, OpKind, Outcome, check_history
from rangekv.check.kv_client import recorded_op, recorded_scan
from rangekv.v1 import kv_pb2, kv_pb2_grpc, types_pb2


class _DictKV(kv_pb2_grpc.KVServicer):
    """Put and Scan over a dict; Scan streams two rows per response.

    ``stale`` makes Scan read an old copy of the dict; a scan starting at
    ``b"boom"`` fails after its first page.
    """

    def __init__(self) -> None:
        self.data: dict[bytes, bytes] = {}
        self.stale: dict[bytes, bytes] | None = None

    async def Put(
        self, request: kv_pb2.PutRequest, context: grpc.aio.ServicerContext
    ) -> kv_pb2.PutResponse:
        self.data[request.key] = request.value
        return kv_pb2.PutResponse()

    async def Scan(
        self, request: kv_pb2.ScanRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[kv_pb2.ScanResponse]:
        source = self.data if self.stale is None else self.stale
        keys = sorted(
            k
            for k in source
            if k >= request.start_key and (not request.end_key or k < request.end_key)
        )
        if request.limit:
            keys = keys[: request.limit]
        for i in range(0, max(len(keys), 1), 2):
            page = [types_pb2.KeyValue(key=k, value=source[k]) for k in keys[i : i + 2]]
            yield kv_pb2.ScanResponse(kvs=page)
            if request.start_key == b"boom":
                await context.abort(grpc.StatusCode.UNAVAILABLE, "stream broke")


async def _with_server(body: object) -> list[Operation]:
    servicer = _DictKV()
    server = grpc.aio.server()
    kv_pb2_grpc.add_KVServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = kv_pb2_grpc.KVStub(channel)
            rec = HistoryRecorder()
            await body(stub, rec, servicer)  # type: ignore[operator]
            return rec.operations()
    finally:
        await server.stop(None)


async def _fill(stub: kv_pb2_grpc.KVStub, rec: HistoryRecorder) -> None:
    for i, key in enumerate([b"a", b"b", b"c", b"d", b"e"]):
        op, err = await recorded_op(0, stub, rec, OpKind.PUT, key, b"%d" % i, timeout=5)
        assert err is None and op.outcome is Outcome.OK


def test_scans_are_recorded_with_their_rows_span_and_limit() -> None:
    async def body(stub: kv_pb2_grpc.KVStub, rec: HistoryRecorder, _: _DictKV) -> None:
        await _fill(stub, rec)
        everything, _ = await recorded_scan(1, stub, rec, b"", timeout=5)
        assert everything.end is None
        assert [k for k, _ in everything.rows] == [b"a", b"b", b"c", b"d", b"e"]
        cut, _ = await recorded_scan(1, stub, rec, b"b", b"z", limit=3, timeout=5)
        assert cut.rows == ((b"b", b"1"), (b"c", b"2"), (b"d", b"3"))
        assert cut.end == b"d\x00"  # saw nothing past d
        whole, _ = await recorded_scan(1, stub, rec, b"d", b"z", limit=3, timeout=5)
        assert whole.end == b"z" and len(whole.rows) == 2  # under the limit: saw it all
        empty, _ = await recorded_scan(1, stub, rec, b"x", None, limit=3, timeout=5)
        assert empty.outcome is Outcome.OK and empty.rows == () and empty.end is None
        broken, err = await recorded_scan(1, stub, rec, b"boom", timeout=5)
        assert err is not None and err.code() is grpc.StatusCode.UNAVAILABLE
        assert broken.outcome is Outcome.FAIL and broken.rows == ()

    ops = asyncio.run(_with_server(body))
    assert sum(o.kind is OpKind.SCAN for o in ops) == 5
    result = check_history(ops)
    assert result.ok is True, result.explanation


def test_a_scan_served_from_a_stale_copy_is_caught() -> None:
    async def body(stub: kv_pb2_grpc.KVStub, rec: HistoryRecorder, kv: _DictKV) -> None:
        await _fill(stub, rec)
        kv.stale = dict(kv.data)
        op, _ = await recorded_op(0, stub, rec, OpKind.PUT, b"c", b"new", timeout=5)
        assert op.outcome is Outcome.OK
        await recorded_scan(1, stub, rec, b"b", b"e", timeout=5)

    result = check_history(asyncio.run(_with_server(body)))
    assert result.ok is False
    assert "SCAN [b'b', b'e')" in result.explanation
