"""A routed client of the Replica API, for clusters and tests without a gateway.

The storage-node tests and benchmark talk to raftnodes directly: one raw
`Batch` call to one node, or a call routed to the leaseholder that follows
NotLeaseHolder hints. Also here: the builders of `ReplicaOp`s, shared with the
in-process cluster's tests.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING

import grpc

from rangekv.common.tls import ChannelOpener
from rangekv.v1 import errors_pb2, replica_pb2, replica_pb2_grpc
from testkit.waiting import async_wait_for

if TYPE_CHECKING:
    from testkit.cluster import Cluster

__all__ = [
    "CHANNEL_OPTIONS",
    "RANGE_ID",
    "ReplicaCallError",
    "ReplicaClient",
    "WriteOutcomeUnknown",
    "cas_op",
    "delete_op",
    "get_op",
    "put_op",
    "scan_op",
]

#: The range every bootstrapped cluster starts with: the whole keyspace.
RANGE_ID = 1

#: Big enough for snapshot-sized reads in tests (the server allows 64 MiB).
CHANNEL_OPTIONS: Sequence[tuple[str, int]] = (
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    ("grpc.max_send_message_length", 64 * 1024 * 1024),
)


def put_op(key: bytes, value: bytes) -> replica_pb2.ReplicaOp:
    return replica_pb2.ReplicaOp(put=replica_pb2.PutOp(key=key, value=value))


def get_op(key: bytes) -> replica_pb2.ReplicaOp:
    return replica_pb2.ReplicaOp(get=replica_pb2.GetOp(key=key))


def delete_op(key: bytes) -> replica_pb2.ReplicaOp:
    return replica_pb2.ReplicaOp(delete=replica_pb2.DeleteOp(key=key))


def cas_op(key: bytes, expected: bytes | None, new_value: bytes) -> replica_pb2.ReplicaOp:
    """`expected=None` means "only if absent"."""
    return replica_pb2.ReplicaOp(
        compare_and_swap=replica_pb2.CompareAndSwapOp(
            key=key,
            expected_value=expected or b"",
            expect_absent=expected is None,
            new_value=new_value,
        )
    )


def scan_op(start: bytes, end: bytes = b"", limit: int = 0) -> replica_pb2.ReplicaOp:
    return replica_pb2.ReplicaOp(scan=replica_pb2.ScanOp(start_key=start, end_key=end, limit=limit))


_WRITE_KINDS = frozenset({"put", "delete", "compare_and_swap"})


class ReplicaCallError(Exception):
    """A batch answered with an in-band error that retrying elsewhere cannot fix."""

    def __init__(self, node_id: int, error: errors_pb2.ReplicaError) -> None:
        super().__init__(f"node {node_id}: {error.WhichOneof('error')}: {error}")
        self.node_id = node_id
        self.error = error


class WriteOutcomeUnknown(Exception):
    """A write may or may not have been applied (the call failed after it was sent)."""


class ReplicaClient:
    """Async gRPC access to a cluster's nodes, with leaseholder routing.

    `batch` is one raw call to one node. `send` routes: it starts at `via` (or
    the last known leaseholder), follows NotLeaseHolder hints, moves on from
    unreachable nodes and retries UNAVAILABLE answers, all bounded by a
    deadline. A write whose outcome is unknown (the RPC failed after it may have
    reached a leader, or the node said so) is never retried: it raises
    WriteOutcomeUnknown so the caller can account for it.

    grpc.aio channels belong to the event loop that created them: make a
    client inside the loop that uses it, and close it there.
    """

    def __init__(self, addresses: Mapping[int, str], channels: ChannelOpener) -> None:
        self.addresses = dict(addresses)
        self._open = channels
        self._channels: dict[int, grpc.aio.Channel] = {}
        self._stubs: dict[int, replica_pb2_grpc.ReplicaStub] = {}
        self.leader_hint = min(self.addresses)
        #: How routed calls went: attempts, hints followed, rpc errors, unavailable answers.
        self.stats = {"attempts": 0, "hints": 0, "rpc_errors": 0, "unavailable": 0}

    @classmethod
    def of(cls, cluster: Cluster) -> ReplicaClient:
        """A client of `cluster`'s raftnodes, as a node of the cluster."""
        return cls(cluster.node_addresses, cluster.node_channels())

    def stub(self, node_id: int) -> replica_pb2_grpc.ReplicaStub:
        stub = self._stubs.get(node_id)
        if stub is None:
            channel = self._open(self.addresses[node_id], CHANNEL_OPTIONS)
            self._channels[node_id] = channel
            stub = self._stubs[node_id] = replica_pb2_grpc.ReplicaStub(channel)
        return stub

    async def reset(self, node_id: int) -> None:
        """Drop the channel of a node (e.g. after it restarted) so the next call reconnects."""
        channel = self._channels.pop(node_id, None)
        self._stubs.pop(node_id, None)
        if channel is not None:
            await channel.close()

    async def close(self) -> None:
        for node_id in list(self._channels):
            await self.reset(node_id)

    async def __aenter__(self) -> ReplicaClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # --- raw calls --------------------------------------------------------------------

    async def batch(
        self,
        node_id: int,
        ops: Sequence[replica_pb2.ReplicaOp],
        *,
        inconsistent: bool = False,
        timeout: float = 10.0,
        range_id: int = RANGE_ID,
    ) -> replica_pb2.ReplicaBatchResponse:
        """One Batch call to one node; gRPC failures raise grpc.aio.AioRpcError."""
        req = replica_pb2.ReplicaBatchRequest(
            range_id=range_id, ops=list(ops), inconsistent=inconsistent
        )
        return await self.stub(node_id).Batch(req, timeout=timeout)

    async def range_info(
        self, node_id: int, timeout: float = 2.0
    ) -> replica_pb2.ReplicaInfo | None:
        """This node's view of range 1, or None if it is unreachable or has no replica."""
        try:
            resp = await self.stub(node_id).RangeInfo(
                replica_pb2.RangeInfoRequest(range_ids=[RANGE_ID]), timeout=timeout
            )
        except grpc.aio.AioRpcError:
            return None
        return resp.replicas[0] if resp.replicas else None

    async def range_infos(
        self, node_ids: Iterable[int] | None = None
    ) -> dict[int, replica_pb2.ReplicaInfo | None]:
        ids = list(node_ids if node_ids is not None else self.addresses)
        infos = await asyncio.gather(*(self.range_info(i) for i in ids))
        return dict(zip(ids, infos, strict=True))

    async def current_leaseholder(self, node_ids: Iterable[int] | None = None) -> int | None:
        """The node that is raft leader with a valid lease (highest term wins), if any."""
        infos = await self.range_infos(node_ids)
        holders = [
            (info.lease_sequence, node)
            for node, info in infos.items()
            if info is not None and info.is_leader and info.lease_valid
        ]
        return max(holders)[1] if holders else None

    async def leaseholder(
        self, node_ids: Iterable[int] | None = None, timeout: float = 20.0
    ) -> int:
        """Wait until some node holds a valid lease; returns its id."""
        ids = list(node_ids) if node_ids is not None else None
        node: int = await async_wait_for(
            lambda: self.current_leaseholder(ids), timeout, "a leaseholder"
        )
        self.leader_hint = node
        return node

    # --- routed calls -----------------------------------------------------------------

    async def send(
        self,
        ops: Sequence[replica_pb2.ReplicaOp],
        *,
        via: int | None = None,
        timeout: float = 15.0,
        rpc_timeout: float = 5.0,
        inconsistent: bool = False,
        max_attempts: int = 200,
    ) -> tuple[int, replica_pb2.ReplicaBatchResponse]:
        """Route a batch to the leaseholder; returns (node that served it, response).

        Raises ReplicaCallError for in-band errors that no retry fixes
        (invalid_argument, range_key_mismatch, range_not_found, intent_exists),
        WriteOutcomeUnknown, or TimeoutError when the deadline passes.
        """
        is_write = any(op.WhichOneof("op") in _WRITE_KINDS for op in ops)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        node = via if via is not None else self.leader_hint
        ids = sorted(self.addresses)
        history: list[str] = []
        for _attempt in range(max_attempts):
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            self.stats["attempts"] += 1
            try:
                resp = await self.batch(
                    node, ops, inconsistent=inconsistent, timeout=min(rpc_timeout, remaining)
                )
            except grpc.aio.AioRpcError as exc:
                self.stats["rpc_errors"] += 1
                history.append(f"n{node}:{exc.code().name}")
                nxt = ids[(ids.index(node) + 1) % len(ids)]
                if self.leader_hint == node:
                    self.leader_hint = nxt
                if is_write:
                    raise WriteOutcomeUnknown(f"node {node}: {exc.code().name}") from exc
                node = nxt
                await asyncio.sleep(0.05)  # retry backoff
                continue
            kind = resp.error.WhichOneof("error") if resp.HasField("error") else None
            if kind is None:
                self.leader_hint = node
                return node, resp
            if kind == "not_lease_holder":
                hint = resp.error.not_lease_holder.leaseholder.node_id
                history.append(f"n{node}:NLH->{hint or '?'}")
                if hint and hint != node and hint in self.addresses:
                    self.stats["hints"] += 1
                    node = hint
                    continue  # a fresh hint is worth trying at once
                node = ids[(ids.index(node) + 1) % len(ids)]
                await asyncio.sleep(0.05)  # nobody knows a leader yet: back off
                continue
            if kind == "unavailable":
                self.stats["unavailable"] += 1
                unavailable = resp.error.unavailable
                history.append(f"n{node}:UNAVAILABLE")
                if is_write and unavailable.outcome == errors_pb2.WRITE_OUTCOME_UNKNOWN:
                    raise WriteOutcomeUnknown(f"node {node}: {unavailable.message}")
                delay = unavailable.retry_after.ToTimedelta().total_seconds()
                await asyncio.sleep(min(max(delay, 0.02), 0.5))  # retry backoff
                continue
            raise ReplicaCallError(node, resp.error)
        raise TimeoutError(
            f"no answer within {timeout}s; attempts: {' '.join(history[-20:]) or 'none'}"
        )

    async def _one(
        self, op: replica_pb2.ReplicaOp, via: int | None, timeout: float
    ) -> replica_pb2.ReplicaOpResult:
        _node, resp = await self.send([op], via=via, timeout=timeout)
        return resp.results[0]

    async def put(
        self, key: bytes, value: bytes, *, via: int | None = None, timeout: float = 15.0
    ) -> replica_pb2.PutResult:
        return (await self._one(put_op(key, value), via, timeout)).put

    async def get(
        self, key: bytes, *, via: int | None = None, timeout: float = 15.0
    ) -> bytes | None:
        result = (await self._one(get_op(key), via, timeout)).get
        return result.kv.value if result.found else None

    async def delete(self, key: bytes, *, via: int | None = None, timeout: float = 15.0) -> bool:
        return (await self._one(delete_op(key), via, timeout)).delete.deleted

    async def cas(
        self,
        key: bytes,
        expected: bytes | None,
        new_value: bytes,
        *,
        via: int | None = None,
        timeout: float = 15.0,
    ) -> replica_pb2.CompareAndSwapResult:
        return (await self._one(cas_op(key, expected, new_value), via, timeout)).compare_and_swap

    async def scan(
        self,
        start: bytes,
        end: bytes = b"",
        limit: int = 0,
        *,
        via: int | None = None,
        timeout: float = 15.0,
    ) -> replica_pb2.ScanResult:
        return (await self._one(scan_op(start, end, limit), via, timeout)).scan

    async def get_many(
        self,
        keys: Sequence[bytes],
        *,
        via: int | None = None,
        inconsistent: bool = False,
        chunk: int = 100,
        timeout: float = 15.0,
    ) -> dict[bytes, bytes | None]:
        """Read many keys in batches of `chunk` gets (one lease check per batch).

        With `inconsistent`, `via` is read directly (no routing): that is how a
        follower's own applied state is inspected.
        """
        out: dict[bytes, bytes | None] = {}
        for i in range(0, len(keys), chunk):
            part = keys[i : i + chunk]
            ops = [get_op(k) for k in part]
            if inconsistent:
                assert via is not None, "an inconsistent read names the node to read"
                resp = await self.batch(via, ops, inconsistent=True, timeout=timeout)
                if resp.error.WhichOneof("error"):
                    raise ReplicaCallError(via, resp.error)
            else:
                _node, resp = await self.send(ops, via=via, timeout=timeout)
            for key, result in zip(part, resp.results, strict=True):
                out[key] = result.get.kv.value if result.get.found else None
        return out
