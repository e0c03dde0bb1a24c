"""Scripted peers: the REAL gateway process against meta and storage nodes that a test scripts.

A black-box test of routing needs answers a real cluster gives only by bad
luck (a replica that keeps naming a node in no descriptor, a meta follower
that lags for seconds, a RangeKeyMismatch that says nothing new) and it needs
to COUNT what the gateway does about them. So the peers here are small gRPC
servers in the test's own process and event loop:

* :class:`ScriptedMeta` -- the ``rangekv.v1.Meta`` API of a meta range with
  several replicas, each on its own port. Lookups are answered from a scripted
  layout: INCONSISTENT lookups (any replica) from :attr:`MetaScript.lagging`
  when it is set (every replica's applied state is behind), CONSISTENT ones
  only at the leader, from :attr:`MetaScript.truth` (a follower answers
  UNAVAILABLE with a NotLeaderError naming the leader, as the real service
  does). ``ListNodes`` returns the scripted registry. Every lookup is recorded
  (:attr:`MetaScript.lookups`).
* :class:`ScriptedNode` -- the ``Replica.BatchStream`` API of one storage
  node. Each batch is recorded (:attr:`ScriptedNode.requests`) and answered by
  the node's :attr:`ScriptedNode.script`: by default :meth:`ScriptedNode.serve`
  (runs the ops on a store shared by all nodes and reports the node's
  descriptor), or any function returning a response or a ``RangeKVError``
  (sent in-band, as a raftnode does).
* :class:`ScriptedCluster` -- the nodes, the meta replicas and one real gateway
  process (``python -m rangekv.cli.main gateway``) pointed at them, its log
  attached to the failure when something goes wrong; :meth:`ScriptedCluster.kv`
  is a client of the gateway's public API and :meth:`ScriptedCluster.metrics`
  reads its Prometheus endpoint.

Scripts run on the test's event loop, between the gateway's requests, so a
test may change them at any point; nothing here sleeps.
"""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from testkit.cluster import Cluster, ClusterSpec
from testkit.metrics import fetch_metrics

from rangekv.cli.cluster import Child
from rangekv.common import errors as E
from rangekv.common.descriptors import RangeDescriptor, ReplicaDescriptor
from rangekv.domain.txn import Intent
from rangekv.v1 import (
    kv_pb2_grpc,
    meta_pb2,
    meta_pb2_grpc,
    replica_pb2,
    replica_pb2_grpc,
    types_pb2,
)

__all__ = [
    "MetaLookupCall",
    "MetaScript",
    "NodeScript",
    "ScriptedCluster",
    "ScriptedMeta",
    "ScriptedNode",
    "descriptor",
    "scripted_cluster",
]

NodeReply = replica_pb2.ReplicaBatchResponse | E.RangeKVError
NodeScript = Callable[[replica_pb2.ReplicaBatchRequest], NodeReply]


def descriptor(
    range_id: int, start: bytes, end: bytes, generation: int, nodes: Sequence[int] = (1, 2, 3)
) -> RangeDescriptor:
    """A descriptor whose replica on node n has replica id n."""
    return RangeDescriptor(
        range_id, start, end, tuple(ReplicaDescriptor(n, n) for n in nodes), generation=generation
    )


def _scan_order(desc: RangeDescriptor) -> tuple[bool, bytes]:
    return (not desc.end_key, desc.end_key)


# ----------------------------------------------------------------------------- nodes


class ScriptedNode(replica_pb2_grpc.ReplicaServicer):
    """One storage node: records every batch, answers with :attr:`script`."""

    def __init__(
        self, node_id: int, store: dict[bytes, bytes], descriptor: RangeDescriptor
    ) -> None:
        self.node_id = node_id
        self.store = store
        #: What :meth:`serve` reports as the descriptor it used (tests may change it).
        self.descriptor = descriptor
        self.lease_sequence = 1
        self.script: NodeScript = self.serve
        self.requests: list[replica_pb2.ReplicaBatchRequest] = []
        self.address = ""

    def serve(self, req: replica_pb2.ReplicaBatchRequest) -> NodeReply:
        """Run the batch on the shared store (gets, puts, deletes, scans)."""
        out = replica_pb2.ReplicaBatchResponse(
            descriptor=self.descriptor.to_proto(),
            read_timestamp=types_pb2.Timestamp(wall_time=1),
            lease_sequence=self.lease_sequence,
        )
        for op in req.ops:
            kind = op.WhichOneof("op")
            res = out.results.add()
            if kind == "get":
                value = self.store.get(op.get.key)
                res.get.found = value is not None
                if value is not None:
                    res.get.kv.key, res.get.kv.value = op.get.key, value
            elif kind == "put":
                self.store[op.put.key] = op.put.value
                res.put.version.wall_time = 1
            elif kind == "delete":
                res.delete.deleted = self.store.pop(op.delete.key, None) is not None
            elif kind == "scan":
                end = op.scan.end_key
                for k in sorted(self.store):
                    if k >= op.scan.start_key and (not end or k < end):
                        res.scan.kvs.add(key=k, value=self.store[k])
            else:
                return E.InvalidArgument(f"ops.{kind}", "not scripted")
        return out

    def count(self, since: int = 0) -> int:
        """Batches received (after the first `since`)."""
        return len(self.requests) - since

    async def BatchStream(
        self,
        request_iterator: AsyncIterator[replica_pb2.BatchStreamRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[replica_pb2.BatchStreamResponse]:
        async for item in request_iterator:
            self.requests.append(item.batch)
            reply = self.script(item.batch)
            if isinstance(reply, E.RangeKVError):
                reply = replica_pb2.ReplicaBatchResponse(error=E.to_replica_error(reply))
            yield replica_pb2.BatchStreamResponse(request_id=item.request_id, batch=reply)

    async def BatchFrames(
        self,
        request_iterator: AsyncIterator[replica_pb2.BatchFramesRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[replica_pb2.BatchFramesResponse]:
        """BatchStream's answers, one frame per frame received (initial metadata
        first, as the real node sends it: the gateway waits for it)."""
        await context.send_initial_metadata(())
        async for frame in request_iterator:
            answers = []
            for item in frame.requests:
                self.requests.append(item.batch)
                reply = self.script(item.batch)
                if isinstance(reply, E.RangeKVError):
                    reply = replica_pb2.ReplicaBatchResponse(error=E.to_replica_error(reply))
                answers.append(
                    replica_pb2.BatchStreamResponse(request_id=item.request_id, batch=reply)
                )
            yield replica_pb2.BatchFramesResponse(responses=answers)


# ----------------------------------------------------------------------------- meta


@dataclass(frozen=True, slots=True)
class MetaLookupCall:
    """One LookupRange a meta replica received."""

    replica: int
    key: bytes
    consistent: bool


@dataclass
class MetaScript:
    """What the scripted meta range knows, shared by its replicas."""

    #: The committed layout as the leader's consistent read sees it.
    truth: list[RangeDescriptor]
    #: What every INCONSISTENT lookup answers instead of the truth (a lagging
    #: applied state), or None: the truth.
    lagging: list[RangeDescriptor] | None = None
    #: Intents every lookup that includes intents returns (INCONSISTENT ones always).
    intents: list[Intent] = field(default_factory=list)
    #: node id -> address (ListNodes).
    nodes: dict[int, str] = field(default_factory=dict)
    #: Index of the leader among the replicas.
    leader: int = 0
    #: When set, every lookup waits for it before answering (a slow meta range).
    hold: asyncio.Event | None = None
    lookups: list[MetaLookupCall] = field(default_factory=list)

    def count(self, *, consistent: bool | None = None, since: int = 0) -> int:
        """Lookups received (of one mode if `consistent` is given) after the first `since`."""
        return sum(
            1 for c in self.lookups[since:] if consistent is None or c.consistent == consistent
        )

    def leader_reads(self) -> int:
        """Consistent lookups the leader answered (a follower refuses them: NotLeader)."""
        return sum(1 for c in self.lookups if c.consistent and c.replica == self.leader)

    def answer(
        self, key: bytes, prefetch: int, consistent: bool, intents: bool
    ) -> meta_pb2.LookupRangeResponse:
        """The forward scan from `key`: the covering descriptor and `prefetch` more."""
        layout = self.truth if consistent or self.lagging is None else self.lagging
        following = sorted(
            (d for d in layout if not d.end_key or d.end_key > key), key=_scan_order
        )[: 1 + prefetch]
        return meta_pb2.LookupRangeResponse(
            descriptors=[d.to_proto() for d in following],
            intents=[i.to_proto() for i in self.intents] if intents else [],
        )


class ScriptedMeta(meta_pb2_grpc.MetaServicer):
    """One replica of the scripted meta range."""

    def __init__(self, index: int, script: MetaScript) -> None:
        self.index = index
        self.script = script
        self.address = ""
        self.peers: list[ScriptedMeta] = []

    async def LookupRange(
        self, request: meta_pb2.LookupRangeRequest, context: grpc.aio.ServicerContext
    ) -> meta_pb2.LookupRangeResponse:
        consistent = request.mode != meta_pb2.LOOKUP_MODE_INCONSISTENT
        self.script.lookups.append(MetaLookupCall(self.index, request.key, consistent))
        if self.script.hold is not None:
            await self.script.hold.wait()
        if consistent and self.index != self.script.leader:
            leader = self.peers[self.script.leader]
            err = E.NotLeader(self.script.leader + 1, leader.address, 1)
            await context.abort_with_status(E.to_rpc_status(err))
        include = not consistent or request.include_intents
        return self.script.answer(request.key, request.prefetch, consistent, include)

    async def ListNodes(
        self, request: meta_pb2.ListNodesRequest, context: grpc.aio.ServicerContext
    ) -> meta_pb2.ListNodesResponse:
        return meta_pb2.ListNodesResponse(
            nodes=[
                meta_pb2.NodeStatus(node=types_pb2.NodeDescriptor(node_id=n, address=a), live=True)
                for n, a in sorted(self.script.nodes.items())
            ]
        )

    async def ResolveIntent(
        self, request: meta_pb2.ResolveIntentRequest, context: grpc.aio.ServicerContext
    ) -> meta_pb2.ResolveIntentResponse:
        return meta_pb2.ResolveIntentResponse(resolved=True)


# ----------------------------------------------------------------------------- cluster


@dataclass
class ScriptedCluster:
    """Scripted nodes and meta replicas, and one real gateway process routing through them."""

    nodes: dict[int, ScriptedNode]
    meta: MetaScript
    gateway: Child
    channel: grpc.aio.Channel

    def kv(self) -> kv_pb2_grpc.KVStub:
        return kv_pb2_grpc.KVStub(self.channel)

    def node_counts(self) -> dict[int, int]:
        return {n: node.count() for n, node in self.nodes.items()}

    def metrics(self) -> str:
        """The gateway's Prometheus text (blocking; call through asyncio.to_thread)."""
        return fetch_metrics(self.gateway.metrics)

    def log(self) -> str:
        try:
            return self.gateway.log_path.read_text(errors="replace")
        except OSError as exc:
            return f"<no gateway log: {exc}>"


def _replica_handler_without_frames(node: ScriptedNode) -> grpc.GenericRpcHandler:
    """The Replica service of `node` minus BatchFrames (the method is then unknown)."""

    class Capture:
        handlers: dict[str, grpc.RpcMethodHandler] = {}

        def add_generic_rpc_handlers(self, _handlers: object) -> None:
            return None

        def add_registered_method_handlers(
            self, _service: str, handlers: dict[str, grpc.RpcMethodHandler]
        ) -> None:
            self.handlers = handlers

    capture = Capture()
    replica_pb2_grpc.add_ReplicaServicer_to_server(node, capture)  # type: ignore[arg-type]
    kept = {name: h for name, h in capture.handlers.items() if name != "BatchFrames"}
    return grpc.method_handlers_generic_handler("rangekv.v1.Replica", kept)


@contextlib.asynccontextmanager
async def scripted_cluster(
    layout: Sequence[RangeDescriptor],
    *,
    node_ids: Sequence[int] = (1, 2, 3),
    meta_replicas: int = 3,
    gateway_args: Sequence[str] = (),
    log_dir: Path | None = None,
    nodes_without_frames: Sequence[int] = (),
) -> AsyncIterator[ScriptedCluster]:
    """Start the peers and a gateway; stop everything on exit, printing the gateway's
    log if the body failed (pytest shows a failing test's output).

    Every node starts serving with the first descriptor of `layout` that lists it;
    the meta range's truth is `layout`. The nodes of `nodes_without_frames` do not
    know Replica.BatchFrames (gRPC answers it UNIMPLEMENTED), as nodes of an older
    version.
    """
    store: dict[bytes, bytes] = {}
    script = MetaScript(truth=list(layout))
    servers: list[grpc.aio.Server] = []
    nodes: dict[int, ScriptedNode] = {}
    metas: list[ScriptedMeta] = []
    for nid in node_ids:
        own = next((d for d in layout if d.replica_on(nid) is not None), layout[0])
        node = ScriptedNode(nid, store, own)
        server = grpc.aio.server()
        if nid in nodes_without_frames:
            server.add_generic_rpc_handlers((_replica_handler_without_frames(node),))
        else:
            replica_pb2_grpc.add_ReplicaServicer_to_server(node, server)
        node.address = f"127.0.0.1:{server.add_insecure_port('127.0.0.1:0')}"
        servers.append(server)
        nodes[nid] = node
        script.nodes[nid] = node.address
    for i in range(meta_replicas):
        replica = ScriptedMeta(i, script)
        server = grpc.aio.server()
        meta_pb2_grpc.add_MetaServicer_to_server(replica, server)
        replica.address = f"127.0.0.1:{server.add_insecure_port('127.0.0.1:0')}"
        servers.append(server)
        metas.append(replica)
    for replica in metas:
        replica.peers = metas
    tmp = None
    if log_dir is None:
        tmp = tempfile.TemporaryDirectory(prefix="scripted-peers-")
        log_dir = Path(tmp.name)
    # The scripted peers speak plaintext: routing, not transport security, is what
    # these tests are about.
    spec = ClusterSpec(
        n_meta=0,
        n_nodes=0,
        insecure=True,
        gateway_args=tuple(gateway_args),
        meta_addrs=tuple(m.address for m in metas),
    )
    processes = Cluster(log_dir, spec)
    gateway = processes.gateways[0]
    channel: grpc.aio.Channel | None = None
    try:
        for server in servers:
            await server.start()
        await processes.start()
        channel = grpc.aio.insecure_channel(gateway.address)
        cluster = ScriptedCluster(nodes, script, gateway, channel)
        try:
            yield cluster
        except BaseException:
            print(f"----- gateway log ({gateway.log_path}) -----\n{cluster.log()}")
            raise
    finally:
        if channel is not None:
            await channel.close()
        await processes.stop()
        for server in servers:
            await server.stop(0)
        if tmp is not None:
            tmp.cleanup()
