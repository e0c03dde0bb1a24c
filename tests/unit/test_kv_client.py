"""rangekv.check.kv_client.failed_outcome: what a client may claim about a failed call."""

from __future__ import annotations

import grpc
import pytest

from rangekv.check import OpKind, Outcome
from rangekv.check.kv_client import failed_outcome
from rangekv.common import errors as E


def gateway_error(exc: E.RangeKVError) -> grpc.aio.AioRpcError:
    """The AioRpcError a client gets when the gateway answers with `exc`."""
    status = E.to_rpc_status(exc)
    return grpc.aio.AioRpcError(
        status.code,
        grpc.aio.Metadata(),
        grpc.aio.Metadata(*status.trailing_metadata),
        status.details,
    )


NOT_APPLIED = E.Unavailable("no leaseholder", 0.05, outcome=E.WriteOutcome.NOT_APPLIED)
UNKNOWN = E.Unavailable("stream broke", 0.05, outcome=E.WriteOutcome.UNKNOWN)


@pytest.mark.parametrize(
    ("kind", "err", "want"),
    [
        (OpKind.GET, gateway_error(UNKNOWN), Outcome.FAIL),  # a read has no effect
        (OpKind.PUT, gateway_error(NOT_APPLIED), Outcome.FAIL),
        (OpKind.PUT, gateway_error(UNKNOWN), Outcome.UNKNOWN),
        (OpKind.CAS, gateway_error(E.InvalidArgument("key", "too long")), Outcome.FAIL),
        (
            OpKind.DELETE,
            grpc.aio.AioRpcError(
                grpc.StatusCode.DEADLINE_EXCEEDED, grpc.aio.Metadata(), grpc.aio.Metadata()
            ),
            Outcome.UNKNOWN,  # our own deadline: the write may still apply
        ),
    ],
)
def test_failed_outcome(kind: OpKind, err: grpc.aio.AioRpcError, want: Outcome) -> None:
    assert failed_outcome(kind, err) is want
