"""What the Admin API does: read the meta range, ask the storage nodes, steer ranges.

The gateway serves `rangekv.v1.Admin` with this; the CLI runs the same code in
its own process when it is given metarange addresses instead of a gateway
(`rangekv ranges --meta ...`), so both paths answer alike.

Two small I/O seams, each a Protocol with an in-memory twin in the unit tests:
`MetaAdmin` (the meta range: descriptors and the store registry; `MetaClient`
fits it) and `NodeAdmin` (the admin RPCs of the `rangekv.v1.Replica` service
at a node's address; `GrpcNodeAdmin` is the real one).

A node that does not answer is reported, never fatal, for the reads
(`list_ranges`, `list_nodes`): they are what an operator reaches for when
something is down. The writes (split, lease transfer, replica change) go to the
range's leaseholder, found by asking the nodes, and look again when the lease
moved between the look and the ask, until the deadline.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

import grpc

from rangekv.common import errors as E
from rangekv.common.clock import Clock, SystemClock
from rangekv.v1 import admin_pb2, meta_pb2, replica_pb2, replica_pb2_grpc, types_pb2

T = TypeVar("T")

DEFAULT_PAGE = 1000
MAX_PAGE = 10_000
MAX_CHANGES = 16
#: Keys one SplitRange call may split at.
MAX_SPLIT_KEYS = 1024
#: Pause before looking for a leaseholder again (the lease is moving or being elected).
RETRY_PAUSE = 0.1
#: The share of a request's deadline one node may take to say what it hosts.
NODE_SHARE = 0.5


class MetaAdmin(Protocol):
    """The meta range as the admin API reads it."""

    async def list_ranges(
        self, start_key: bytes = b"", limit: int = 0, include_intents: bool = False
    ) -> meta_pb2.ListRangesResponse: ...

    async def list_nodes(self) -> meta_pb2.ListNodesResponse: ...


class NodeAdmin(Protocol):
    """The admin RPCs of the storage node at `address` (gRPC failures propagate)."""

    async def range_info(
        self, address: str, range_ids: Sequence[int], timeout: float
    ) -> replica_pb2.RangeInfoResponse: ...

    async def admin_split(
        self, address: str, req: replica_pb2.AdminSplitRequest, timeout: float
    ) -> replica_pb2.AdminSplitResponse: ...

    async def transfer_lease(
        self, address: str, req: replica_pb2.TransferLeaseRequest, timeout: float
    ) -> replica_pb2.TransferLeaseResponse: ...

    async def change_replicas(
        self, address: str, req: replica_pb2.ChangeReplicasRequest, timeout: float
    ) -> replica_pb2.ChangeReplicasResponse: ...


class GrpcNodeAdmin:
    """`NodeAdmin` over real gRPC; `stub(address)` gives a (cached) Replica stub."""

    def __init__(self, stub: Callable[[str], replica_pb2_grpc.ReplicaStub]) -> None:
        self._stub = stub

    async def range_info(
        self, address: str, range_ids: Sequence[int], timeout: float
    ) -> replica_pb2.RangeInfoResponse:
        req = replica_pb2.RangeInfoRequest(range_ids=list(range_ids))
        return await self._stub(address).RangeInfo(req, timeout=timeout)

    async def admin_split(
        self, address: str, req: replica_pb2.AdminSplitRequest, timeout: float
    ) -> replica_pb2.AdminSplitResponse:
        return await self._stub(address).AdminSplit(req, timeout=timeout)

    async def transfer_lease(
        self, address: str, req: replica_pb2.TransferLeaseRequest, timeout: float
    ) -> replica_pb2.TransferLeaseResponse:
        return await self._stub(address).TransferLease(req, timeout=timeout)

    async def change_replicas(
        self, address: str, req: replica_pb2.ChangeReplicasRequest, timeout: float
    ) -> replica_pb2.ChangeReplicasResponse:
        return await self._stub(address).ChangeReplicas(req, timeout=timeout)


def rpc_failure_text(exc: BaseException) -> str:
    """`CODE: message` for a failed call to a node (what `UnreachableNode.error` holds)."""
    if isinstance(exc, grpc.aio.AioRpcError):
        return f"{exc.code().name}: {exc.details() or 'no details'}"
    if isinstance(exc, E.RangeKVError):
        return f"{exc.code.name}: {exc.message}"
    if isinstance(exc, TimeoutError):
        return "DEADLINE_EXCEEDED: no answer in time"
    return f"UNKNOWN: {type(exc).__name__}: {exc}"


@dataclass
class NodeReport:
    """One registered node and what it said of its replicas (or why it did not)."""

    status: meta_pb2.NodeStatus
    replicas: list[replica_pb2.ReplicaInfo] = field(default_factory=list)
    error: str = ""

    @property
    def node_id(self) -> int:
        return int(self.status.node.node_id)

    @property
    def address(self) -> str:
        return str(self.status.node.address)


@dataclass(frozen=True)
class Holder:
    """The replica leading a range: where it is and what it reports."""

    node: NodeReport
    info: replica_pb2.ReplicaInfo


def leaseholder(reports: Sequence[NodeReport], range_id: int) -> Holder | None:
    """The node whose replica leads `range_id`: a valid lease first, then the newest lease."""
    leaders = [
        Holder(n, r)
        for n in reports
        for r in n.replicas
        if r.descriptor.range_id == range_id and r.is_leader
    ]
    leaders.sort(key=lambda h: (not h.info.lease_valid, -h.info.lease_sequence))
    return leaders[0] if leaders else None


def hosts(reports: Sequence[NodeReport], range_id: int) -> bool:
    return any(r.descriptor.range_id == range_id for n in reports for r in n.replicas)


class ClusterAdmin:
    """The Admin API's operations on request and response protos, with a deadline each."""

    def __init__(
        self,
        meta: MetaAdmin,
        nodes: NodeAdmin,
        *,
        clock: Clock | None = None,
        retry_pause: float = RETRY_PAUSE,
    ) -> None:
        self._meta = meta
        self._nodes = nodes
        self._clock: Clock = clock if clock is not None else SystemClock()
        self._retry_pause = retry_pause

    # --- reads -------------------------------------------------------------------------

    async def reports(self, range_ids: Sequence[int], timeout: float) -> list[NodeReport]:
        """The registry, and RangeInfo (of `range_ids`; empty = all) from every node at once.

        Each node gets half of `timeout` (`NODE_SHARE`), so that a node that hangs
        (paused, partitioned) is reported as unreachable within the caller's
        deadline instead of failing the whole request.
        """
        statuses = (await self._meta.list_nodes()).nodes
        reports = [NodeReport(s) for s in sorted(statuses, key=lambda s: s.node.node_id)]
        node_timeout = timeout * NODE_SHARE

        async def ask(report: NodeReport) -> None:
            try:
                async with asyncio.timeout(node_timeout):
                    info = await self._nodes.range_info(report.address, range_ids, node_timeout)
                report.replicas = list(info.replicas)
            except (grpc.aio.AioRpcError, E.RangeKVError, TimeoutError) as exc:
                report.error = rpc_failure_text(exc)

        await asyncio.gather(*(ask(r) for r in reports))
        return reports

    async def list_ranges(
        self, req: admin_pb2.AdminListRangesRequest, timeout: float
    ) -> admin_pb2.AdminListRangesResponse:
        if req.limit < 0 or req.limit > MAX_PAGE:
            raise E.InvalidArgument("limit", f"must be in [0, {MAX_PAGE}] (0: {DEFAULT_PAGE})")
        limit = req.limit or DEFAULT_PAGE
        return await self._bounded(timeout, self._list_ranges(req.start_key, limit, timeout))

    async def _list_ranges(
        self, start_key: bytes, limit: int, timeout: float
    ) -> admin_pb2.AdminListRangesResponse:
        page = (await self._meta.list_ranges(start_key=start_key, limit=limit)).descriptors
        descriptors = sorted(page, key=lambda d: d.start_key)[:limit]
        reports = await self.reports([d.range_id for d in descriptors], timeout)
        out = admin_pb2.AdminListRangesResponse()
        for d in descriptors:
            status = out.ranges.add(descriptor=d)
            holder = leaseholder(reports, d.range_id)
            if holder is not None:
                status.leaseholder_node_id = holder.node.node_id
                status.lease_valid = holder.info.lease_valid
                status.lease_sequence = holder.info.lease_sequence
                status.applied_index = holder.info.applied_index
            status.approximate_size_bytes = max(
                (
                    r.approximate_size_bytes
                    for n in reports
                    for r in n.replicas
                    if r.descriptor.range_id == d.range_id
                ),
                default=0,
            )
        if len(page) >= limit and descriptors and descriptors[-1].end_key:
            out.next_start_key = descriptors[-1].end_key
        for n in reports:
            if n.error:
                out.unreachable_nodes.add(node_id=n.node_id, address=n.address, error=n.error)
        return out

    async def list_nodes(
        self, req: admin_pb2.AdminListNodesRequest, timeout: float
    ) -> admin_pb2.AdminListNodesResponse:
        reports = await self._bounded(timeout, self.reports([], timeout))
        out = admin_pb2.AdminListNodesResponse()
        for n in reports:
            out.nodes.add(
                status=n.status,
                reachable=not n.error,
                error=n.error,
                replica_count=len(n.replicas),
                lease_count=sum(1 for r in n.replicas if r.is_leader and r.lease_valid),
            )
        return out

    # --- writes ------------------------------------------------------------------------

    async def split_range(
        self, req: admin_pb2.AdminSplitRangeRequest, timeout: float
    ) -> admin_pb2.AdminSplitRangeResponse:
        """Split at every key of the request, in ascending order, one after the other.

        Every key is checked before the first split (none empty, no duplicates, none
        already starting a range), so a refused request changed nothing. Each split
        answers once its right-hand range can serve (the node waits for it), so the
        next key -- often inside that right-hand range -- finds a leaseholder.
        """
        keys = _split_keys(req)
        deadline = self._clock.monotonic() + timeout
        for key in keys:
            await self._split_target(key)
        out = admin_pb2.AdminSplitRangeResponse()
        for key in keys:
            remaining = deadline - self._clock.monotonic()
            if remaining <= 0:
                done = len(out.splits)
                raise E.DeadlineExceeded(
                    f"{done} of {len(keys)} splits done within {timeout:.1f}s "
                    f"(the next was at {key!r})"
                )
            one = await self._split_one(key, remaining)
            out.splits.add(split_key=key, left=one.left, right=one.right)
            out.left.CopyFrom(one.left)
            out.right.CopyFrom(one.right)
        return out

    async def _split_target(self, key: bytes) -> types_pb2.RangeDescriptor:
        """The committed range holding `key`, which must not start there already."""
        found = (await self._meta.list_ranges(start_key=key, limit=1)).descriptors
        desc = next((d for d in found if _covers(d, key)), None)
        if desc is None:
            raise E.NotFound(f"no range holds key {key!r}")
        if desc.start_key == key:
            raise E.FailedPrecondition(f"range {desc.range_id} already starts at {key!r}")
        return desc

    async def _split_one(self, key: bytes, timeout: float) -> admin_pb2.AdminSplitRangeResponse:
        async def attempt() -> admin_pb2.AdminSplitRangeResponse | None:
            desc = await self._split_target(key)
            holder = await self._holder(desc.range_id, timeout)
            resp = await self._node_call(
                holder,
                "split",
                self._nodes.admin_split(
                    holder.node.address,
                    replica_pb2.AdminSplitRequest(range_id=desc.range_id, split_key=key),
                    timeout,
                ),
            )
            if resp.HasField("error"):
                raise E.from_replica_error(resp.error)
            return admin_pb2.AdminSplitRangeResponse(left=resp.left, right=resp.right)

        return await self._until_done(timeout, attempt)

    async def transfer_lease(
        self, req: admin_pb2.AdminTransferLeaseRequest, timeout: float
    ) -> admin_pb2.AdminTransferLeaseResponse:
        if not req.range_id:
            raise E.InvalidArgument("range_id", "must not be 0")
        if not req.target_node_id:
            raise E.InvalidArgument("target_node_id", "must not be 0")

        async def attempt() -> admin_pb2.AdminTransferLeaseResponse | None:
            reports = await self.reports([req.range_id], timeout)
            if not any(n.node_id == req.target_node_id for n in reports):
                raise E.NotFound(f"node {req.target_node_id} is not in the registry")
            holder = _holder_of(reports, req.range_id)
            if holder is None:
                return None
            out = admin_pb2.AdminTransferLeaseResponse(
                range_id=req.range_id,
                from_node_id=holder.node.node_id,
                to_node_id=req.target_node_id,
            )
            if holder.node.node_id == req.target_node_id:
                return out
            resp = await self._node_call(
                holder,
                "transfer leases",
                self._nodes.transfer_lease(
                    holder.node.address,
                    replica_pb2.TransferLeaseRequest(
                        range_id=req.range_id, target_node_id=req.target_node_id
                    ),
                    timeout,
                ),
            )
            if resp.HasField("error"):
                raise E.from_replica_error(resp.error)
            out.moved = True
            out.lease_sequence = resp.lease_sequence
            return out

        return await self._until_done(timeout, attempt)

    async def change_replicas(
        self, req: admin_pb2.AdminChangeReplicasRequest, timeout: float
    ) -> admin_pb2.AdminChangeReplicasResponse:
        if not req.range_id:
            raise E.InvalidArgument("range_id", "must not be 0")
        if not req.changes:
            raise E.InvalidArgument("changes", "name at least one change")
        if len(req.changes) > MAX_CHANGES:
            raise E.InvalidArgument("changes", f"at most {MAX_CHANGES} changes at once")
        for i, change in enumerate(req.changes):
            if change.type == replica_pb2.REPLICA_CHANGE_TYPE_UNSPECIFIED:
                raise E.InvalidArgument(f"changes[{i}].type", "must be set")
            if not change.node_id:
                raise E.InvalidArgument(f"changes[{i}].node_id", "must not be 0")

        async def attempt() -> admin_pb2.AdminChangeReplicasResponse | None:
            holder = await self._holder(req.range_id, timeout)
            resp = await self._node_call(
                holder,
                "change replicas",
                self._nodes.change_replicas(
                    holder.node.address,
                    replica_pb2.ChangeReplicasRequest(
                        range_id=req.range_id,
                        changes=req.changes,
                        expected_generation=req.expected_generation,
                    ),
                    timeout,
                ),
            )
            if resp.HasField("error"):
                raise E.from_replica_error(resp.error)
            return admin_pb2.AdminChangeReplicasResponse(descriptor=resp.descriptor)

        return await self._until_done(timeout, attempt)

    # --- plumbing ----------------------------------------------------------------------

    async def _holder(self, range_id: int, timeout: float) -> Holder:
        """The range's leaseholder; `_NoLeader` (retried) while none is known."""
        reports = await self.reports([range_id], timeout)
        holder = _holder_of(reports, range_id)
        if holder is None:
            raise _NoLeader(range_id)
        return holder

    async def _node_call(self, holder: Holder, what: str, call: Awaitable[T]) -> T:
        try:
            return await call
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.UNIMPLEMENTED:
                raise E.Unimplemented(
                    f"node {holder.node.node_id} cannot {what} (not implemented in its version)"
                ) from None
            raise E.from_rpc_error(exc) from None

    async def _bounded(self, timeout: float, work: Awaitable[T]) -> T:
        try:
            async with asyncio.timeout(timeout):
                return await work
        except TimeoutError:
            raise E.DeadlineExceeded(f"no answer within {timeout:.1f}s") from None

    async def _until_done(self, timeout: float, attempt: Callable[[], Awaitable[T | None]]) -> T:
        """Run `attempt` until it answers; None or a routing error means look again.

        A node's in-band routing error (NotLeaseHolder, RangeKeyMismatch,
        RangeNotFound) says the request was not carried out, so asking again
        (after looking for the leaseholder again) is safe; every other error is
        the answer.
        """
        deadline = self._clock.monotonic() + timeout
        last = "no leader found"
        while True:
            remaining = deadline - self._clock.monotonic()
            if remaining <= 0:
                raise E.Unavailable(f"gave up after {timeout:.1f}s: {last}; try again")
            try:
                result = await self._bounded(remaining, attempt())
            except (E.RoutingError, _NoLeader) as exc:
                last = exc.message
            except E.DeadlineExceeded:
                raise E.Unavailable(f"gave up after {timeout:.1f}s: {last}; try again") from None
            else:
                if result is not None:
                    return result
            await self._clock.sleep(
                min(self._retry_pause, max(0.0, deadline - self._clock.monotonic()))
            )


class _NoLeader(E.Unavailable):
    def __init__(self, range_id: int) -> None:
        super().__init__(f"range {range_id} has no leader right now")


def _holder_of(reports: Sequence[NodeReport], range_id: int) -> Holder | None:
    """The leaseholder; NotFound when no reachable node hosts the range at all."""
    holder = leaseholder(reports, range_id)
    if holder is None and not hosts(reports, range_id):
        down = [n.node_id for n in reports if n.error]
        unknown = f" (nodes {down} did not answer)" if down else ""
        raise E.NotFound(f"no node hosts range {range_id}{unknown}")
    return holder


def _split_keys(req: admin_pb2.AdminSplitRangeRequest) -> list[bytes]:
    """The request's keys in ascending order; INVALID_ARGUMENT for an empty or
    repeated key, or too many."""
    keys = [bytes(req.split_key), *(bytes(k) for k in req.more_split_keys)]
    if len(keys) > MAX_SPLIT_KEYS:
        raise E.InvalidArgument("more_split_keys", f"at most {MAX_SPLIT_KEYS} keys in all")
    for i, key in enumerate(keys):
        if not key:
            field_name = "split_key" if i == 0 else f"more_split_keys[{i - 1}]"
            raise E.InvalidArgument(field_name, "must not be empty")
    ordered = sorted(keys)
    for a, b in itertools.pairwise(ordered):
        if a == b:
            raise E.InvalidArgument("more_split_keys", f"{a!r} appears more than once")
    return ordered


def _covers(d: types_pb2.RangeDescriptor, key: bytes) -> bool:
    return bool(d.start_key <= key and (not d.end_key or key < d.end_key))


__all__ = [
    "ClusterAdmin",
    "GrpcNodeAdmin",
    "Holder",
    "MetaAdmin",
    "NodeAdmin",
    "NodeReport",
    "leaseholder",
    "rpc_failure_text",
]
