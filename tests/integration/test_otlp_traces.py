"""Traces leave real processes over OTLP, and one request is one trace.

A tiny OTLP collector (the `TraceService/Export` RPC of opentelemetry-proto, on
this test's event loop) receives the spans of a cluster (the kit's) started with
`RANGEKV_OTLP_ENDPOINT` pointing at it. The test sends a Put and a Get through
the gateway with a W3C `traceparent` of its own, so their traces are known in
advance, and checks that each arrived as ONE trace spanning two processes:

    (test client span)
      /rangekv.v1.KV/Put            gateway, SERVER
        node.batch                  gateway, CLIENT (traceparent carried in the batch)
          replica.batch             leaseholder raftnode, SERVER
            raft.commit             leaseholder raftnode (proposal until applied)

and for the Get, `read.lease` (or `read.read_index`) under `replica.batch`.
The gateway talks to nodes over one long-lived stream carrying many requests
per message, which is exactly why the traceparent travels in the message and
not in gRPC metadata; this test is what proves the two halves meet.

Spans are exported in the background (`OTEL_BSP_SCHEDULE_DELAY` is lowered
here); the test waits on the collector's condition with a deadline, never
for a fixed time.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from dataclasses import dataclass

import grpc
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.trace.v1 import trace_pb2
from testkit.fixtures import ClusterFactory
from testkit.replicas import Replicas
from testkit.waiting import async_wait_for

from rangekv.v1 import kv_pb2, kv_pb2_grpc

pytestmark = pytest.mark.timeout(240)

RANGE_ID = 1
SERVER = trace_pb2.Span.SPAN_KIND_SERVER
CLIENT = trace_pb2.Span.SPAN_KIND_CLIENT


@dataclass(frozen=True)
class Received:
    """One exported span and the process it came from."""

    service: str
    instance: str
    span: trace_pb2.Span


class Collector(trace_service_pb2_grpc.TraceServiceServicer):
    """Keeps every exported span; `wait_until` wakes on each export."""

    def __init__(self) -> None:
        self.spans: list[Received] = []
        self.changed = asyncio.Condition()

    async def Export(
        self,
        request: trace_service_pb2.ExportTraceServiceRequest,
        context: grpc.aio.ServicerContext,
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        for resource_spans in request.resource_spans:
            attrs = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
            service = attrs.get("service.name", "")
            instance = attrs.get("service.instance.id", "")
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    self.spans.append(Received(service, instance, span))
        async with self.changed:
            self.changed.notify_all()
        return trace_service_pb2.ExportTraceServiceResponse()

    def trace(self, trace_id: bytes) -> list[Received]:
        return [r for r in self.spans if r.span.trace_id == trace_id]

    async def wait_until(self, predicate: Callable[[], bool], timeout: float) -> None:
        async with asyncio.timeout(timeout), self.changed:
            await self.changed.wait_for(predicate)


def names(spans: list[Received]) -> set[str]:
    return {r.span.name for r in spans}


def one(spans: list[Received], name: str, **where: str) -> Received:
    found = [
        r
        for r in spans
        if r.span.name == name and all(getattr(r, k) == v for k, v in where.items())
    ]
    assert len(found) == 1, f"expected one {name} {where}, got {len(found)}: {spans}"
    return found[0]


def attribute(span: trace_pb2.Span, key: str) -> int | str | bool:
    for a in span.attributes:
        if a.key == key:
            field = a.value.WhichOneof("value")
            return getattr(a.value, field)  # type: ignore[no-any-return,arg-type]
    raise KeyError(key)


def new_traceparent() -> tuple[bytes, bytes, tuple[tuple[str, str]]]:
    """A fresh (trace id, parent span id, gRPC metadata carrying them)."""
    trace_id, span_id = os.urandom(16), os.urandom(8)
    return trace_id, span_id, (("traceparent", f"00-{trace_id.hex()}-{span_id.hex()}-01"),)


async def test_put_and_get_are_each_one_trace_from_gateway_to_raft(
    clusters: ClusterFactory,
) -> None:
    collector = Collector()
    otlp = grpc.aio.server()
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(collector, otlp)
    otlp_port = otlp.add_insecure_port("127.0.0.1:0")
    await otlp.start()
    env = {
        "RANGEKV_OTLP_ENDPOINT": f"http://127.0.0.1:{otlp_port}",
        "OTEL_BSP_SCHEDULE_DELAY": "100",  # export within ~0.1 s instead of 5 s
    }
    cluster = clusters.create(env=env)
    replicas = Replicas(cluster)
    try:
        await cluster.start()
        async with cluster.client_channels()(cluster.gateways[0].address) as channel:
            kv = kv_pb2_grpc.KVStub(channel)

            async def warm() -> bool:
                try:
                    await kv.Put(kv_pb2.PutRequest(key=b"warm", value=b"up"), timeout=5)
                except grpc.aio.AioRpcError:
                    return False
                return True

            # The first range elects a leader and the gateway fills its cache
            # (untraced by us; those spans are roots of their own traces).
            await async_wait_for(warm, 60, "a first put through the gateway")
            holder = await async_wait_for(
                lambda: replicas.leaseholder(RANGE_ID), 30, "a valid lease"
            )

            put_trace, put_parent, put_md = new_traceparent()
            await kv.Put(kv_pb2.PutRequest(key=b"traced", value=b"v"), metadata=put_md, timeout=15)
            get_trace, get_parent, get_md = new_traceparent()
            got = await kv.Get(kv_pb2.GetRequest(key=b"traced"), metadata=get_md, timeout=15)
            assert got.found and got.kv.value == b"v"
            assert await replicas.leaseholder(RANGE_ID) == holder, "the lease moved during the test"

            put_names = {"/rangekv.v1.KV/Put", "node.batch", "replica.batch", "raft.commit"}
            get_names = {"/rangekv.v1.KV/Get", "node.batch", "replica.batch"}
            read_names = {"read.lease", "read.read_index"}
            await collector.wait_until(
                lambda: (
                    put_names <= names(collector.trace(put_trace))
                    and get_names <= names(collector.trace(get_trace))
                    and bool(read_names & names(collector.trace(get_trace)))
                ),
                timeout=30,
            )
    finally:
        await cluster.stop()
        await otlp.stop(0)

    gateway, node = "rangekv-gateway", "rangekv-raftnode"
    leaseholder = str(holder)

    # --- the Put: gateway -> leaseholder -> raft commit, one trace, linked parents.
    spans = collector.trace(put_trace)
    server = one(spans, "/rangekv.v1.KV/Put", service=gateway)
    assert server.span.kind == SERVER
    assert server.span.parent_span_id == put_parent  # continues the client's trace
    calls = [r for r in spans if r.span.name == "node.batch"]
    assert calls and all(r.service == gateway for r in calls)
    assert all(r.span.kind == CLIENT for r in calls)
    assert all(r.span.parent_span_id == server.span.span_id for r in calls)
    batch = one(spans, "replica.batch", service=node, instance=leaseholder)
    assert batch.span.kind == SERVER
    answered = [r for r in calls if r.span.span_id == batch.span.parent_span_id]
    assert len(answered) == 1, "the node's span is a child of the gateway's call to it"
    assert attribute(answered[0].span, "rangekv.node_id") == holder
    assert attribute(batch.span, "rangekv.range_id") == RANGE_ID
    commit = one(spans, "raft.commit", service=node, instance=leaseholder)
    assert commit.span.parent_span_id == batch.span.span_id
    assert batch.span.start_time_unix_nano <= commit.span.start_time_unix_nano
    assert commit.span.end_time_unix_nano <= batch.span.end_time_unix_nano
    assert commit.span.end_time_unix_nano <= server.span.end_time_unix_nano  # acked after apply
    assert {r.service for r in spans} == {gateway, node}

    # --- the Get: a lease read (or read-index) on the leaseholder, same shape.
    spans = collector.trace(get_trace)
    server = one(spans, "/rangekv.v1.KV/Get", service=gateway)
    assert server.span.parent_span_id == get_parent
    batch = one(spans, "replica.batch", service=node, instance=leaseholder)
    call = one(spans, "node.batch", service=gateway)
    assert call.span.parent_span_id == server.span.span_id
    assert batch.span.parent_span_id == call.span.span_id
    (read,) = [r for r in spans if r.span.name in read_names]
    assert read.span.parent_span_id == batch.span.span_id
    assert "raft.commit" not in names(spans)
