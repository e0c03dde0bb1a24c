"""`reads_only`: which node answers may wait for company on a busy stream.

An answer to a batch that writes must never be held back (see
`rangekv.common.frames`), so every write kind makes a batch not reads-only,
wherever it sits among the batch's operations."""

from __future__ import annotations

import pytest

from rangekv.raftnode.requests import READ_KINDS, WRITE_KINDS, reads_only
from rangekv.v1 import replica_pb2

OPS = {
    "get": replica_pb2.ReplicaOp(get=replica_pb2.GetOp(key=b"k")),
    "scan": replica_pb2.ReplicaOp(scan=replica_pb2.ScanOp(start_key=b"a", end_key=b"b")),
    "fence": replica_pb2.ReplicaOp(fence=replica_pb2.FenceOp()),
    "put": replica_pb2.ReplicaOp(put=replica_pb2.PutOp(key=b"k", value=b"v")),
    "delete": replica_pb2.ReplicaOp(delete=replica_pb2.DeleteOp(key=b"k")),
    "compare_and_swap": replica_pb2.ReplicaOp(
        compare_and_swap=replica_pb2.CompareAndSwapOp(key=b"k")
    ),
}


def batch(*kinds: str) -> replica_pb2.ReplicaBatchRequest:
    return replica_pb2.ReplicaBatchRequest(range_id=1, ops=[OPS[k] for k in kinds])


def test_every_kind_is_covered() -> None:
    assert set(OPS) == READ_KINDS | WRITE_KINDS | {"fence"}


@pytest.mark.parametrize("kinds", [("get",), ("scan",), ("get", "get", "scan"), ("fence",), ()])
def test_batches_of_reads_are_reads_only(kinds: tuple[str, ...]) -> None:
    assert reads_only(batch(*kinds))


@pytest.mark.parametrize("write", sorted(WRITE_KINDS))
@pytest.mark.parametrize("at", [0, 1, 2])
def test_any_write_anywhere_makes_a_batch_not_reads_only(write: str, at: int) -> None:
    kinds = ["get", "get"]
    kinds.insert(at, write)
    assert not reads_only(batch(*kinds))
