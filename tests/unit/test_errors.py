"""The one mapping between exceptions and wire errors, in-band and through real gRPC."""

from __future__ import annotations

import grpc
import pytest

from rangekv.common import errors as E
from rangekv.common.descriptors import RangeDescriptor, ReplicaDescriptor
from rangekv.v1 import kv_pb2, kv_pb2_grpc, types_pb2

DESC = RangeDescriptor(
    7, b"a", b"m", (ReplicaDescriptor(1, 1), ReplicaDescriptor(4, 9)), generation=3
)
TXN = types_pb2.TxnMeta(id=b"\x01" * 16, record_key=b"a", kind="split")

CASES: list[E.RangeKVError] = [
    E.NotLeaseHolder(7, ReplicaDescriptor(4, 9), "127.0.0.1:7001", 12, DESC),
    E.NotLeaseHolder(7, None, "", 0, None),
    E.RangeKeyMismatch(7, (DESC, RangeDescriptor(8, b"m", b"", generation=3))),
    E.RangeNotFound(7, 2),
    E.InvalidArgument("key", "must not be empty"),
    E.IntentExists(b"meta-key", TXN),
    E.Unavailable("no quorum", retry_after=0.25, outcome=E.WriteOutcome.UNKNOWN),
]


def _same(a: E.RangeKVError, b: E.RangeKVError) -> None:
    assert type(a) is type(b)
    assert {k: v for k, v in vars(a).items() if k != "message"} == {
        k: v for k, v in vars(b).items() if k != "message"
    }


@pytest.mark.parametrize("exc", CASES, ids=lambda e: type(e).__name__)
def test_in_band_round_trip(exc: E.RangeKVError) -> None:
    _same(E.from_replica_error(E.to_replica_error(exc)), exc)


class _FailingKV(kv_pb2_grpc.KVServicer):
    def __init__(self, exc: E.RangeKVError) -> None:
        self.exc = exc

    async def Put(self, request: kv_pb2.PutRequest, context: grpc.aio.ServicerContext) -> None:  # type: ignore[override]
        await context.abort_with_status(E.to_rpc_status(self.exc))


STATUS_CASES: list[tuple[E.RangeKVError, grpc.StatusCode]] = [
    (E.InvalidArgument("value", "larger than 1048576 bytes"), grpc.StatusCode.INVALID_ARGUMENT),
    (
        E.Unavailable("no leaseholder", retry_after=0.5, outcome=E.WriteOutcome.UNKNOWN),
        grpc.StatusCode.UNAVAILABLE,
    ),
    (E.NotLeader(3, "127.0.0.1:9000", 5), grpc.StatusCode.UNAVAILABLE),
    (E.ConditionFailed(b"k", DESC), grpc.StatusCode.FAILED_PRECONDITION),
    (E.IntentExists(b"k", TXN), grpc.StatusCode.ABORTED),
    (E.ResourceExhausted("too many proposals", 0.2), grpc.StatusCode.RESOURCE_EXHAUSTED),
    (E.NotLeaseHolder(7, ReplicaDescriptor(4, 9), "h:1", 12, DESC), grpc.StatusCode.UNAVAILABLE),
    (E.NotFound("no node hosts range 9"), grpc.StatusCode.NOT_FOUND),
    (E.FailedPrecondition("range 2 already starts at b'm'"), grpc.StatusCode.FAILED_PRECONDITION),
    (E.Unimplemented("decommission is not available"), grpc.StatusCode.UNIMPLEMENTED),
]


@pytest.mark.parametrize("exc,code", STATUS_CASES, ids=lambda c: type(c).__name__)
async def test_status_round_trip_over_real_grpc(exc: E.RangeKVError, code: grpc.StatusCode) -> None:
    server = grpc.aio.server()
    kv_pb2_grpc.add_KVServicer_to_server(_FailingKV(exc), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = kv_pb2_grpc.KVStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as failed:
                await stub.Put(kv_pb2.PutRequest(key=b"k", value=b"v"), timeout=5)
    finally:
        await server.stop(None)
    assert failed.value.code() == code
    _same(E.from_rpc_error(failed.value, is_write=True), exc)
