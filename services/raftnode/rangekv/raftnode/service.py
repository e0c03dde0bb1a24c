"""rangekv.v1.Replica served by a storage node.

Data calls answer in-band (results or one ReplicaError); the gRPC status of a
call is OK unless the call itself failed. Splits and transaction records are
served here too (`rangekv.raftnode.split`, `rangekv.raftnode.txn_push`), and
replica changes (`rangekv.raftnode.change`).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import grpc

from rangekv.common import errors as E
from rangekv.common.frames import FRAME_MAX_BYTES, FrameQueue
from rangekv.domain.txn import TxnStatus
from rangekv.raft import LeaseState
from rangekv.raftnode import txn as T
from rangekv.raftnode.change import PROMOTE_VOTER, ReplicaChanger
from rangekv.raftnode.consistency import replica_checksum
from rangekv.raftnode.replica import RangeReplica
from rangekv.raftnode.requests import reads_only
from rangekv.raftnode.split import SplitCoordinator
from rangekv.raftnode.store import Store
from rangekv.raftnode.txn_push import push_local
from rangekv.replication.checksum import MAX_CHECKSUMS_PER_REQUEST, checksum_off_loop
from rangekv.v1 import raftcmd_pb2, replica_pb2, replica_pb2_grpc


class ReplicaService(replica_pb2_grpc.ReplicaServicer):
    def __init__(
        self,
        store: Store,
        *,
        splits: SplitCoordinator,
        changes: ReplicaChanger,
        transfer_timeout: float = 5.0,
        max_stream_inflight: int = 1024,
        frame_gather_turns: int = 0,
        on_frame_gather: Callable[[int], None] | None = None,
    ) -> None:
        """`frame_gather_turns`, `on_frame_gather`: a busy BatchFrames stream's frame of
        read answers may wait that many event-loop turns for more (see
        `rangekv.common.frames`); answers to writes never wait."""
        self._store = store
        self._clock = store.clock
        self._max_stream_inflight = max_stream_inflight
        self._frame_gather_turns = frame_gather_turns
        self._on_frame_gather = on_frame_gather
        self._transfer_timeout = transfer_timeout
        self._splits = splits
        self._changes = changes
        self._txn_expiry = splits.txns.pusher.expiry

    async def Batch(
        self, request: replica_pb2.ReplicaBatchRequest, context: grpc.aio.ServicerContext
    ) -> replica_pb2.ReplicaBatchResponse:
        return await self.serve_batch(request)

    async def serve_batch(
        self, request: replica_pb2.ReplicaBatchRequest
    ) -> replica_pb2.ReplicaBatchResponse:
        """One batch, answered in-band: the gRPC calls' work, and what a KV API
        served in this process (`rangekv.raftnode.frontend`) calls directly."""
        replica = self._store.replica(request.range_id)
        if replica is None:
            err = E.RangeNotFound(request.range_id, self._store.node_id)
            return replica_pb2.ReplicaBatchResponse(error=E.to_replica_error(err))
        return await replica.batch(request)

    async def BatchStream(
        self,
        request_iterator: AsyncIterator[replica_pb2.BatchStreamRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[replica_pb2.BatchStreamResponse]:
        """Serve batches concurrently; answer each as soon as it is done."""
        async for answers in self._serve_stream(request_iterator, framed=False):
            for answer in answers:
                yield answer

    async def BatchFrames(
        self,
        request_iterator: AsyncIterator[replica_pb2.BatchFramesRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[replica_pb2.BatchFramesResponse]:
        """BatchStream with many requests per message: the answers finished while the
        previous frame was being written leave together in the next one.

        Initial metadata goes out at once: the gateway sends its first frame only
        after it (see the gateway's NodeStream), so that a stream refused here
        reaches it with its real status."""
        await context.send_initial_metadata(())
        async for answers in self._serve_stream(_unframe(request_iterator), framed=True):
            yield replica_pb2.BatchFramesResponse(responses=answers)

    async def _serve_stream(
        self, requests: AsyncIterator[replica_pb2.BatchStreamRequest], *, framed: bool
    ) -> AsyncIterator[list[replica_pb2.BatchStreamResponse]]:
        """Serve a stream's batches concurrently; yield their answers as they finish:
        one at a time, or (`framed`) all that are ready, up to FRAME_MAX_BYTES.

        Bounded: at most `max_stream_inflight` batches of one stream are served at
        once; past that the stream is not read (gRPC flow control pushes back on
        the sender), so one gateway cannot make a node queue without limit."""
        out: FrameQueue[replica_pb2.BatchStreamResponse] = FrameQueue(
            FRAME_MAX_BYTES if framed else 1,
            gather_turns=self._frame_gather_turns if framed else 0,
            on_gather=self._on_frame_gather,
        )
        pending: set[asyncio.Task[None]] = set()
        slots = asyncio.Semaphore(self._max_stream_inflight)
        gathering = framed and self._frame_gather_turns > 0

        async def serve(req: replica_pb2.BatchStreamRequest) -> None:
            try:
                resp = await self.serve_batch(req.batch)
                answer = replica_pb2.BatchStreamResponse(request_id=req.request_id, batch=resp)
                out.put(
                    answer,
                    answer.ByteSize() if framed else 1,
                    may_wait=gathering and reads_only(req.batch),
                )
            finally:
                slots.release()

        async def reader() -> None:
            try:
                async for req in requests:
                    await slots.acquire()
                    task = asyncio.ensure_future(serve(req))
                    pending.add(task)
                    task.add_done_callback(pending.discard)
                if pending:
                    await asyncio.gather(*pending, return_exceptions=True)
            finally:
                out.close()

        read_task = asyncio.ensure_future(reader())
        try:
            async for answers in out.frames():
                yield answers
            await asyncio.wait([read_task])
            if (failure := read_task.exception()) is not None:
                raise failure  # e.g. an undecodable request: the stream's status says so
        finally:
            read_task.cancel()
            for task in list(pending):
                task.cancel()

    async def RangeInfo(
        self, request: replica_pb2.RangeInfoRequest, context: grpc.aio.ServicerContext
    ) -> replica_pb2.RangeInfoResponse:
        wanted = set(request.range_ids)
        selected = [r for r in self._store.replicas() if not wanted or r.range_id in wanted]
        computes = request.checksums and not request.counts_only
        if computes and len(selected) > MAX_CHECKSUMS_PER_REQUEST:
            raise E.InvalidArgument(
                "range_ids",
                f"checksums are computed for at most {MAX_CHECKSUMS_PER_REQUEST} replicas "
                f"per request; this one selects {len(selected)}: name them in range_ids",
            )
        infos = []
        replicas = leases = 0
        now = self._clock.monotonic()
        for replica in selected:
            group = replica.group
            replicas += 1
            leases += group.is_leader
            if request.counts_only:
                continue
            infos.append(
                replica_pb2.ReplicaInfo(
                    descriptor=replica.descriptor.to_proto(),
                    replica_id=replica.replica_id,
                    is_leader=group.is_leader,
                    lease_valid=group.lease_status(now).state is LeaseState.VALID,
                    lease_sequence=group.term(),
                    leader_replica_id=group.leader(),
                    applied_index=replica.applied_index,
                    commit_index=group.commit_index(),
                    log_first_index=group.log_first_index(),
                    approximate_size_bytes=replica.state.approx_size or 0,
                )
            )
        if request.checksums:
            engine = self._store.state_engine
            ids = [info.descriptor.range_id for info in infos]
            # One worker-thread round trip for every replica asked about.
            sums = await checksum_off_loop(lambda: [replica_checksum(engine, i) for i in ids])
            for info, found in zip(infos, sums, strict=True):
                if found is not None:
                    info.checksum.CopyFrom(found.to_proto())
        return replica_pb2.RangeInfoResponse(
            node_id=self._store.node_id,
            replicas=infos,
            draining=self._store.draining,
            replica_count=replicas,
            lease_count=leases,
        )

    async def TransferLease(
        self, request: replica_pb2.TransferLeaseRequest, context: grpc.aio.ServicerContext
    ) -> replica_pb2.TransferLeaseResponse:
        replica = self._store.replica(request.range_id)
        if replica is None:
            err = E.RangeNotFound(request.range_id, self._store.node_id)
            return replica_pb2.TransferLeaseResponse(error=E.to_replica_error(err))
        target = replica.descriptor.replica_on(request.target_node_id)
        if target is None:
            err2 = E.InvalidArgument(
                "target_node_id", f"node {request.target_node_id} has no replica of this range"
            )
            return replica_pb2.TransferLeaseResponse(error=E.to_replica_error(err2))
        if not replica.is_leader:
            return replica_pb2.TransferLeaseResponse(
                error=E.to_replica_error(replica.not_lease_holder())
            )
        replica.transfer_leadership(target.replica_id)
        deadline = self._clock.monotonic() + self._transfer_timeout
        while self._clock.monotonic() < deadline:
            if replica.group.leader() == target.replica_id:
                return replica_pb2.TransferLeaseResponse(lease_sequence=replica.group.term())
            await self._clock.sleep(0.02)  # polling the core's state; not a synchronisation sleep
        err3 = E.Unavailable(
            f"range {request.range_id}: lease did not move to node {request.target_node_id} "
            f"within {self._transfer_timeout}s"
        )
        return replica_pb2.TransferLeaseResponse(error=E.to_replica_error(err3))

    # --- splits and transaction records ----------------------------------------------------

    def _replica_or_error(self, range_id: int) -> RangeReplica:
        replica = self._store.replica(range_id)
        if replica is None:
            raise E.RangeNotFound(range_id, self._store.node_id)
        return replica

    async def AdminSplit(
        self, request: replica_pb2.AdminSplitRequest, context: grpc.aio.ServicerContext
    ) -> replica_pb2.AdminSplitResponse:
        try:
            left, right = await self._splits.split(request.range_id, request.split_key)
        except E.RangeKVError as exc:
            return replica_pb2.AdminSplitResponse(error=E.to_replica_error(exc))
        return replica_pb2.AdminSplitResponse(left=left.to_proto(), right=right.to_proto())

    async def ChangeReplicas(
        self, request: replica_pb2.ChangeReplicasRequest, context: grpc.aio.ServicerContext
    ) -> replica_pb2.ChangeReplicasResponse:
        """Each change in order, on the leaseholder. ADD_LEARNER waits for nothing;
        PROMOTE_VOTER waits until the learner caught up. `expected_generation`
        guards the first change only (each change bumps the generation)."""
        try:
            replica = self._replica_or_error(request.range_id)
            if not request.changes:
                raise E.InvalidArgument("changes", "at least one change")
            expected = request.expected_generation
            desc = replica.descriptor
            self._changes.busy.add(request.range_id)  # the rebalancer keeps off
            try:
                for change in request.changes:
                    if change.type == PROMOTE_VOTER:
                        await self._changes.wait_caught_up(request.range_id, change.node_id)
                    desc = await self._changes.change(
                        request.range_id, change.type, change.node_id, expected
                    )
                    expected = 0
            finally:
                self._changes.busy.discard(request.range_id)
        except E.RangeKVError as exc:
            return replica_pb2.ChangeReplicasResponse(error=E.to_replica_error(exc))
        return replica_pb2.ChangeReplicasResponse(descriptor=desc.to_proto())

    async def PushTxn(
        self, request: replica_pb2.PushTxnRequest, context: grpc.aio.ServicerContext
    ) -> replica_pb2.PushTxnResponse:
        try:
            replica = self._replica_or_error(request.range_id)
            if not replica.is_leader:
                raise replica.not_lease_holder()
            rec = await push_local(replica, request.txn, self._txn_expiry)
        except E.RangeKVError as exc:
            return replica_pb2.PushTxnResponse(error=E.to_replica_error(exc))
        return replica_pb2.PushTxnResponse(record=rec)

    async def QueryTxn(
        self, request: replica_pb2.QueryTxnRequest, context: grpc.aio.ServicerContext
    ) -> replica_pb2.QueryTxnResponse:
        try:
            replica = self._replica_or_error(request.range_id)
            rec = await replica.read_txn_record(request.txn)
        except E.RangeKVError as exc:
            return replica_pb2.QueryTxnResponse(error=E.to_replica_error(exc))
        return replica_pb2.QueryTxnResponse(record=rec)

    async def EndTxn(
        self, request: replica_pb2.EndTxnRequest, context: grpc.aio.ServicerContext
    ) -> replica_pb2.EndTxnResponse:
        try:
            replica = self._replica_or_error(request.range_id)
            if request.status == TxnStatus.COMMITTED:
                op = raftcmd_pb2.TxnOp(kind=T.COMMIT, txn=request.txn)
                if request.HasField("split_left") or request.HasField("split_right"):
                    if not (request.HasField("split_left") and request.HasField("split_right")):
                        raise E.InvalidArgument("split_right", "a split needs both descriptors")
                    op.split_left.CopyFrom(request.split_left)
                    op.split_right.CopyFrom(request.split_right)
            elif request.status == TxnStatus.ABORTED:
                op = raftcmd_pb2.TxnOp(kind=T.ABORT, txn=request.txn)
            else:
                raise E.InvalidArgument("status", "must be COMMITTED or ABORTED")
            rec = await replica.propose_txn_op(op)
        except E.RangeKVError as exc:
            return replica_pb2.EndTxnResponse(error=E.to_replica_error(exc))
        return replica_pb2.EndTxnResponse(record=rec)


async def _unframe(
    frames: AsyncIterator[replica_pb2.BatchFramesRequest],
) -> AsyncIterator[replica_pb2.BatchStreamRequest]:
    """The requests of a BatchFrames stream, one by one, in order."""
    async for frame in frames:
        for request in frame.requests:
            yield request
