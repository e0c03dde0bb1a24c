"""KV/Stream and rangekv.client through real processes (a secure cluster of the test kit).

One cluster for the module (3 metarange replicas, 3 raftnodes, 1 gateway, mutual
TLS; the gateway's streams bounded at STREAM_BOUND open requests). Checked:

- the raw stream: answers by id, a google.rpc.Status per failed request (the
  unary call's code and details), the stream going on after a failure, ending
  OK after a half-close;
- a client that writes and does not read: the gateway stops reading at its bound
  (plus what HTTP/2 flow control holds) and answers everything once read;
- rangekv.client on both routes (KV/Stream through the gateway with a client
  certificate, direct with the node certificate): values, errors;
- the client's deadline with the gateway paused (SIGSTOP), its reconnect and
  safe retries across a gateway restart;
- a concurrent history through the client (both routes, the gateway killed and
  restarted in the middle) checked linearizable by rangekv.check.check_history.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator

import grpc
import pytest
import pytest_asyncio
from google.rpc import error_details_pb2
from testkit.cluster import Cluster, ClusterSpec
from testkit.metrics import fetch_metrics, metric_samples
from testkit.waiting import async_wait_for

from rangekv.check import HistoryRecorder, OpKind, Outcome, check_history
from rangekv.cli.dev import wait_until_serving
from rangekv.client import Client, ClientConfig, Delete, Get, Put, connect
from rangekv.common import errors as E
from rangekv.common.config import SecurityConfig
from rangekv.v1 import kv_pb2, kv_pb2_grpc

pytestmark = pytest.mark.asyncio(loop_scope="module")

STREAM_BOUND = 16


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def cluster(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Cluster]:
    spec = ClusterSpec(env={"RANGEKV_STREAM_MAX_INFLIGHT": str(STREAM_BOUND)})
    lc = Cluster(tmp_path_factory.mktemp("kvstream") / "data", spec)
    try:
        await lc.start()
        await wait_until_serving(lc.gateways[0].address, lc.client_channels())
        yield lc
    finally:
        await lc.close()  # a paused process is resumed and killed too


def security(lc: Cluster) -> SecurityConfig:
    assert lc.certs_dir is not None
    return SecurityConfig(certs_dir=lc.certs_dir)


async def stream_client(lc: Cluster, **kw: object) -> Client:
    """rangekv.client through the gateway, as the dev cluster's admin client (by name)."""
    config = ClientConfig(addr=lc.gateways[0].address, **kw)  # type: ignore[arg-type]
    # The dev certificates name the node's hosts; check the gateway by its node name, as
    # LocalCluster.client_channels does.
    return await connect(config, channels=lc.client_channels("admin"), ready_timeout=30)


async def direct_client(lc: Cluster) -> Client:
    """rangekv.client routing in this process, with the cluster's node certificate."""
    config = ClientConfig(route="direct", meta_addrs=",".join(lc.meta_addrs))
    return await connect(config, security(lc))


def metric(lc: Cluster, name: str) -> float:
    samples = metric_samples(fetch_metrics(lc.gateways[0].metrics), name)
    assert samples, f"no {name} on the gateway"
    return samples[0][1]


def item(rid: int, **op: object) -> kv_pb2.StreamRequestItem:
    return kv_pb2.StreamRequestItem(request_id=rid, **op)  # type: ignore[arg-type]


async def test_raw_stream_answers_each_request_with_a_result_or_its_status(
    cluster: Cluster,
) -> None:
    async with cluster.client_channels()(cluster.gateways[0].address) as ch:
        call = kv_pb2_grpc.KVStub(ch).Stream(timeout=30)
        await call.write(
            kv_pb2.StreamRequest(
                requests=[
                    item(1, put=kv_pb2.PutRequest(key=b"s/a", value=b"1")),
                    item(2, put=kv_pb2.PutRequest(key=b"", value=b"x")),
                    item(3),
                    item(
                        4,
                        batch=kv_pb2.BatchRequest(
                            requests=[
                                kv_pb2.BatchRequestItem(
                                    put=kv_pb2.PutRequest(key=b"s/b", value=b"2")
                                )
                            ]
                        ),
                    ),
                ]
            )
        )
        got: dict[int, kv_pb2.StreamResponseItem] = {}
        while len(got) < 4:
            for answer in (await call.read()).responses:
                got[answer.request_id] = answer
        # Requests of one stream run concurrently: a read after its write is sent once
        # the write is answered, as with two unary calls.
        await call.write(
            kv_pb2.StreamRequest(requests=[item(5, get=kv_pb2.GetRequest(key=b"s/a"))])
        )
        await call.done_writing()
        while (message := await call.read()) is not grpc.aio.EOF:
            for answer in message.responses:
                got[answer.request_id] = answer
        assert await call.code() is grpc.StatusCode.OK
    assert sorted(got) == [1, 2, 3, 4, 5]
    assert got[1].put.version.wall_time > 0 and got[4].batch.responses[0].HasField("put")
    assert got[5].get.found and got[5].get.kv.value == b"1"
    for rid, field in ((2, "key"), (3, "request")):
        status = got[rid].error
        assert status.code == grpc.StatusCode.INVALID_ARGUMENT.value[0], status
        bad = error_details_pb2.BadRequest()
        assert status.details[0].Unpack(bad) and bad.field_violations[0].field == field


async def test_a_client_that_does_not_read_is_held_at_the_bound(cluster: Cluster) -> None:
    """The gateway stops reading a stream whose answers are not taken: it starts at most
    its bound of requests, plus the answers HTTP/2 flow control lets the transport hold."""
    big = b"x" * 200_000
    sent = 300
    started_before = metric(cluster, "rangekv_gateway_stream_requests")
    async with cluster.client_channels()(cluster.gateways[0].address) as ch:
        kv = kv_pb2_grpc.KVStub(ch)
        await kv.Put(kv_pb2.PutRequest(key=b"s/big", value=big), timeout=10)
        call = kv.Stream(timeout=60)
        for rid in range(1, sent + 1):
            request = kv_pb2.StreamRequest(
                requests=[item(rid, get=kv_pb2.GetRequest(key=b"s/big"))]
            )
            await asyncio.wait_for(call.write(request), 10)
        # Watch the gateway until it stops taking requests (the same count five times).
        seen: list[float] = []
        deadline = time.monotonic() + 30
        while len(seen) < 5 or len(set(seen[-5:])) > 1:
            assert time.monotonic() < deadline, seen
            seen.append(metric(cluster, "rangekv_gateway_stream_requests") - started_before)
            await asyncio.sleep(0.2)  # sampling a counter, not waiting for an event
        held = seen[-1]
        assert STREAM_BOUND <= held < sent / 2, seen
        answered = 0
        while answered < sent:
            message = await asyncio.wait_for(call.read(), 30)
            answered += len(message.responses)
            assert all(a.get.kv.value == big for a in message.responses)
        call.cancel()
    assert answered == sent


async def test_the_client_on_both_routes(cluster: Cluster) -> None:
    for open_client in (stream_client, direct_client):
        async with await open_client(cluster) as kv:
            route = open_client.__name__
            key = f"c/{route}".encode()
            v = await kv.put(key, b"1")
            got = await kv.get(key)
            assert got is not None and got.value == b"1" and got.version == v
            assert not (await kv.cas(key, b"3", expected=b"2")).succeeded
            assert (await kv.cas(key, b"2", expected=b"1")).succeeded
            out = await kv.batch([Put(key + b"/x", b"x"), Get(key), Delete(key + b"/none")])
            assert out[1] is not None and out[1].value == b"2" and out[2] is False
            rows = [r.key async for r in kv.scan(key, key + b"0")]
            assert rows == [key, key + b"/x"]
            with pytest.raises(E.InvalidArgument) as refused:
                await kv.put(b"", b"v")
            assert refused.value.field == "key", route
            assert await kv.delete(key) is True


async def test_the_deadline_holds_when_the_gateway_is_paused(cluster: Cluster) -> None:
    gateway = cluster.gateways[0]
    async with await stream_client(cluster) as kv:
        await kv.put(b"d/k", b"1")
        cluster.pause(gateway)
        try:
            for call in (kv.put(b"d/k", b"2", timeout=0.5), kv.get(b"d/k", timeout=0.5)):
                started = time.monotonic()
                with pytest.raises(E.DeadlineExceeded) as late:
                    await call
                assert time.monotonic() - started < 1.5
            # The write was sent: whether it applied is unknown (it will when resumed).
        finally:
            cluster.resume(gateway)
        got = await kv.get(b"d/k", timeout=10)
        assert got is not None and got.value in (b"1", b"2")
        assert late.value.code is grpc.StatusCode.DEADLINE_EXCEEDED


async def test_the_client_reconnects_and_retries_what_is_safe(cluster: Cluster) -> None:
    gateway = cluster.gateways[0]
    async with await stream_client(cluster) as kv:
        await kv.put(b"r/k", b"before")
        await cluster.stop(gateway)
        # While the gateway is down, nothing can be sent: reads and writes are NOT_APPLIED
        # and retried until the gateway is back (within their deadline).
        read = asyncio.ensure_future(kv.get(b"r/k", timeout=60))
        write = asyncio.ensure_future(kv.put(b"r/k", b"after", timeout=60))
        await async_wait_for(lambda: kv.retries >= 2, 30, "both requests to fail once and retry")
        await cluster.start_children([gateway])
        got = await read
        assert got is not None and got.value in (b"before", b"after")
        await write
        again = await kv.get(b"r/k")
        assert again is not None and again.value == b"after"
        assert kv.retries >= 2


async def test_a_concurrent_history_through_the_client_is_linearizable(
    cluster: Cluster,
) -> None:
    rec = HistoryRecorder()
    keys = [b"h/%d" % i for i in range(4)]
    clients = [await stream_client(cluster, connections=2), await direct_client(cluster)]
    restarted = asyncio.Event()

    async def worker(cid: int, kv: Client, ops: int) -> None:
        rng = random.Random(cid)
        for n in range(ops):
            key = rng.choice(keys)
            value = b"c%d-%d" % (cid, n)
            roll = rng.random()
            kind = (
                OpKind.GET
                if roll < 0.4
                else OpKind.PUT
                if roll < 0.7
                else OpKind.CAS
                if roll < 0.9
                else OpKind.DELETE
            )
            expected = rng.choice([None, b"c%d-%d" % (rng.randrange(12), rng.randrange(ops))])
            if kind is OpKind.CAS:
                handle = rec.invoke(cid, kind, key, value=value, expected=expected)
            elif kind is OpKind.PUT:
                handle = rec.invoke(cid, kind, key, value=value)
            else:
                handle = rec.invoke(cid, kind, key)
            try:
                if kind is OpKind.GET:
                    got = await kv.get(key, timeout=5)
                    rec.ok(handle, read=got.value if got else None)
                elif kind is OpKind.PUT:
                    await kv.put(key, value, timeout=5)
                    rec.ok(handle)
                elif kind is OpKind.CAS:
                    res = await kv.cas(key, value, expected=expected, timeout=5)
                    seen = res.current.value if not res.succeeded and res.current else None
                    rec.ok(handle, succeeded=res.succeeded, read=seen)
                else:
                    rec.ok(handle, succeeded=await kv.delete(key, timeout=5))
            except E.RangeKVError as exc:
                if outcome(kind, exc) is Outcome.FAIL:
                    rec.fail(handle)
                else:
                    rec.unknown(handle)

    async def restart_gateway() -> None:
        await async_wait_for(lambda: len(rec) >= 60, 60, "the history to be under way", 0.01)
        # kill -9, abruptly: requests in flight get no answer; then start it again
        await cluster.restart(cluster.gateways[0])
        restarted.set()

    try:
        await asyncio.gather(
            *(worker(cid, clients[cid % 2], 40) for cid in range(12)), restart_gateway()
        )
    finally:
        for c in clients:
            await c.close()
    assert restarted.is_set()
    ops = rec.operations()
    result = check_history(ops, timeout=120)
    counts = {o: sum(op.outcome is o for op in ops) for o in Outcome}
    print(f"\nhistory: {len(ops)} operations, {counts}")
    assert result.ok is True, result.explanation
    assert counts[Outcome.OK] > len(ops) // 2


def outcome(kind: OpKind, exc: E.RangeKVError) -> Outcome:
    """What a client can know of an operation that failed with ``exc``: a read has no
    effect; a write refused before anything was written, or reported NOT_APPLIED, did
    not apply; any other write may have."""
    if kind is OpKind.GET or isinstance(
        exc, E.InvalidArgument | E.ResourceExhausted | E.PermissionDenied
    ):
        return Outcome.FAIL
    applied = exc.outcome if isinstance(exc, E.Unavailable | E.DeadlineExceeded) else None
    return Outcome.FAIL if applied == E.WriteOutcome.NOT_APPLIED else Outcome.UNKNOWN
