"""Tracing: free when off, one connected trace per request when on.

The request path is CPU bound (about a millisecond of Python per put per
process), so with tracing off (the default) nothing may build a carrier, a
traceparent string or a span per request: these tests make every such builder
raise and drive the gateway's node calls, the node batching, the server
interceptor and the replica's batch entry point through the untraced path.
With tracing on, an in-memory exporter checks that the traceparent carried in
a node batch continues the caller's trace, and that work shared by several
requests appears in each of their traces.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from types import SimpleNamespace
from typing import Any

import grpc
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from rangekv.common import server as server_module
from rangekv.common import telemetry as telemetry_module
from rangekv.common.descriptors import RangeDescriptor, ReplicaDescriptor
from rangekv.common.server import ErrorInterceptor
from rangekv.common.telemetry import SpanSet, Telemetry, traceparent
from rangekv.domain.txn import TxnStatus
from rangekv.gateway import dist_sender as dist_sender_module
from rangekv.gateway.cache_types import LookupResult
from rangekv.gateway.dist_sender import DistSender, NodeDirectory
from rangekv.gateway.node_client import BatchReply, NodeClients
from rangekv.gateway.range_cache import RangeCache
from rangekv.raftnode import replica as replica_module
from rangekv.raftnode.replica import RangeReplica
from rangekv.v1 import replica_pb2, types_pb2

N1 = ReplicaDescriptor(1, 1)
WHOLE = RangeDescriptor(1, b"", b"", (N1,), generation=1)
PUT = replica_pb2.ReplicaOp(put=replica_pb2.PutOp(key=b"k", value=b"v"))


def _forbidden(*_: Any, **__: Any) -> Any:
    raise AssertionError("tracing is off: nothing may build a carrier or a span")


@pytest.fixture
def no_carriers(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every way to build a carrier, a traceparent or a span set raises."""
    monkeypatch.setattr(telemetry_module._TRACE_CONTEXT, "inject", _forbidden)
    monkeypatch.setattr(telemetry_module._TRACE_CONTEXT, "extract", _forbidden)
    monkeypatch.setattr(dist_sender_module, "traceparent", _forbidden)
    monkeypatch.setattr(server_module.propagate, "extract", _forbidden)
    monkeypatch.setattr(replica_module.SpanSet, "start", _forbidden)


def memory_tracer() -> tuple[trace.Tracer, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider.get_tracer("test"), exporter


class RecordingNodes:
    """NodeClients' `submit`, answering at once; remembers each call's traceparent."""

    def __init__(self) -> None:
        self.traceparents: list[str] = []

    def submit(
        self, address: str, range_id: int, ops: list[Any], *, traceparent: str = "", **_: Any
    ) -> asyncio.Future[Any]:
        self.traceparents.append(traceparent)
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        result = replica_pb2.ReplicaOpResult(put=replica_pb2.PutResult())
        fut.set_result(BatchReply([result], WHOLE.to_proto(), types_pb2.Timestamp(), 1))
        return fut


def make_sender(nodes: RecordingNodes, tracer: trace.Tracer | None) -> DistSender:
    async def meta_lookup(key: bytes, prefetch: int) -> LookupResult:
        return LookupResult(descriptors=(WHOLE,))

    async def push(*_: Any) -> TxnStatus:
        return TxnStatus.PENDING

    async def no_registry() -> Any:
        raise AssertionError("not needed")

    directory = NodeDirectory(no_registry)
    directory.set(1, "n1")
    cache = RangeCache(meta_lookup, push, lambda *_: None, prefetch=0)
    return DistSender(cache, nodes, directory, timeout=1.0, tracer=tracer)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- tracing off


def test_telemetry_without_endpoint_has_no_active_tracer() -> None:
    telemetry = Telemetry("test")
    try:
        assert telemetry.tracing is False
        assert telemetry.active_tracer is None
    finally:
        telemetry.shutdown()


async def test_untraced_node_call_builds_no_carrier(no_carriers: None) -> None:
    nodes = RecordingNodes()
    sender = make_sender(nodes, tracer=None)
    await sender.send(b"k", PUT, is_write=True)
    assert nodes.traceparents == [""]


async def test_untraced_batch_carries_no_traceparents() -> None:
    sent: list[replica_pb2.ReplicaBatchRequest] = []

    class Stream:
        def submit(self, batch: replica_pb2.ReplicaBatchRequest, has_writes: bool) -> Any:
            sent.append(batch)
            return asyncio.get_running_loop().create_future()

    clients = NodeClients(channel_factory=lambda addr: None)  # type: ignore[arg-type,return-value]
    clients._stream = lambda address: Stream()  # type: ignore[assignment,method-assign,return-value]
    clients.submit("n1", 1, [PUT], has_writes=True)
    clients.submit("n1", 1, [PUT], has_writes=True, traceparent="")
    pending = next(iter(clients._pending.values()))
    assert pending.traceparents is None  # not even an empty list per batch
    await asyncio.sleep(0)  # let the per-iteration flush run
    assert len(sent) == 1 and len(sent[0].ops) == 2
    assert list(sent[0].traceparents) == []
    assert not sent[0].HasField("read_timestamp")


async def test_untraced_rpc_extracts_no_context(no_carriers: None) -> None:
    telemetry = Telemetry("test")
    interceptor = ErrorInterceptor(logging.getLogger("test"), telemetry)

    async def behavior(request: str, context: Any) -> str:
        assert trace.get_current_span() is trace.INVALID_SPAN
        return request + "!"

    try:
        handler = interceptor._wrap_coroutine(behavior, "/t/M")
        context = SimpleNamespace(
            code=lambda: grpc.StatusCode.OK,
            invocation_metadata=lambda: (("traceparent", "x"),),
        )
        assert await handler("hi", context) == "hi!"
    finally:
        telemetry.shutdown()


def _fake_replica(tracer: trace.Tracer | None) -> tuple[RangeReplica, list[Any]]:
    """A RangeReplica whose `_batch` only records the span set it was given."""
    replica = RangeReplica.__new__(RangeReplica)
    replica.ctx = SimpleNamespace(tracer=tracer, node_id=1)  # type: ignore[assignment]
    replica.range_id = WHOLE.range_id
    seen: list[Any] = []

    async def batch(req: Any, spans: SpanSet | None = None) -> replica_pb2.ReplicaBatchResponse:
        seen.append(spans)
        if spans is not None:
            with spans.child("raft.commit"):
                pass
        return replica_pb2.ReplicaBatchResponse()

    replica._batch = batch  # type: ignore[method-assign]
    return replica, seen


async def test_untraced_replica_batch_builds_no_spans(no_carriers: None) -> None:
    traced_req = replica_pb2.ReplicaBatchRequest(range_id=1, ops=[PUT], traceparents=["00-x"])
    replica, seen = _fake_replica(tracer=None)
    await replica.batch(traced_req)  # a traced caller, but this node does not trace
    tracer, exporter = memory_tracer()
    replica, seen2 = _fake_replica(tracer)
    await replica.batch(replica_pb2.ReplicaBatchRequest(range_id=1, ops=[PUT]))
    assert seen == [None] and seen2 == [None]
    assert exporter.get_finished_spans() == ()


# ---------------------------------------------------------------------------- tracing on


async def test_traced_request_is_one_trace_across_the_batch() -> None:
    """gateway server span -> node.batch -> (wire) -> replica.batch -> raft.commit."""
    tracer, exporter = memory_tracer()
    nodes = RecordingNodes()
    sender = make_sender(nodes, tracer)
    with tracer.start_as_current_span("/rangekv.v1.KV/Put", kind=trace.SpanKind.SERVER):
        await sender.send(b"k", PUT, is_write=True)
    (carried,) = nodes.traceparents
    assert carried.startswith("00-")
    replica, seen = _fake_replica(tracer)
    req = replica_pb2.ReplicaBatchRequest(range_id=1, ops=[PUT], traceparents=[carried])
    await replica.batch(req)
    assert isinstance(seen[0], SpanSet)

    spans = {s.name: s for s in exporter.get_finished_spans()}
    assert set(spans) == {"/rangekv.v1.KV/Put", "node.batch", "replica.batch", "raft.commit"}
    trace_ids = {s.context.trace_id for s in spans.values()}
    assert len(trace_ids) == 1
    chain = ["/rangekv.v1.KV/Put", "node.batch", "replica.batch", "raft.commit"]
    for parent, child in itertools.pairwise(chain):
        assert spans[child].parent is not None
        assert spans[child].parent.span_id == spans[parent].context.span_id, child
    assert spans["node.batch"].kind == trace.SpanKind.CLIENT
    assert spans["replica.batch"].kind == trace.SpanKind.SERVER
    assert spans["replica.batch"].attributes is not None
    assert spans["replica.batch"].attributes["rangekv.range_id"] == 1


def test_shared_work_is_recorded_in_every_callers_trace() -> None:
    tracer, exporter = memory_tracer()
    parents = [tracer.start_span(f"caller{i}") for i in range(3)]
    carried = [traceparent(p) for p in parents]
    with SpanSet.start(tracer, "replica.batch", [*carried, carried[0]]) as batch:
        with batch.child("raft.commit") as commit:
            commit.update_name("raft.commit")
        batch.set_attribute("rangekv.ops", 3)
    for p in parents:
        p.end()
    finished = exporter.get_finished_spans()
    batches = [s for s in finished if s.name == "replica.batch"]
    commits = [s for s in finished if s.name == "raft.commit"]
    assert len(batches) == 3 and len(commits) == 3  # the duplicate traceparent counted once
    by_trace = {s.context.trace_id: s for s in batches}
    assert set(by_trace) == {p.get_span_context().trace_id for p in parents}
    for commit_span in commits:
        parent = by_trace[commit_span.context.trace_id]
        assert commit_span.parent is not None
        assert commit_span.parent.span_id == parent.context.span_id


def test_failure_marks_every_span_of_the_set() -> None:
    tracer, exporter = memory_tracer()
    parent = tracer.start_span("caller")
    with pytest.raises(ValueError), SpanSet.start(tracer, "replica.batch", [traceparent(parent)]):
        raise ValueError("boom")
    (span,) = exporter.get_finished_spans()
    assert span.status.status_code == trace.StatusCode.ERROR


def test_malformed_traceparent_starts_a_new_trace() -> None:
    tracer, exporter = memory_tracer()
    with SpanSet.start(tracer, "replica.batch", ["not-a-traceparent"]):
        pass
    (span,) = exporter.get_finished_spans()
    assert span.parent is None
