"""ServiceServer over real grpc.aio: error mapping, reflection, health, metrics, ready line, stop."""

from __future__ import annotations

import asyncio
import io
import logging
import os
import signal
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from rangekv.common import errors as E
from rangekv.common.config import ServerConfig
from rangekv.common.logs import parse_ready_line, setup_logging
from rangekv.common.server import (
    PROBE_LIVENESS,
    PROBE_READINESS,
    PROBE_STARTUP,
    PROBES,
    ServiceServer,
)
from rangekv.common.telemetry import Telemetry
from rangekv.v1 import kv_pb2, kv_pb2_grpc, types_pb2

KV_SERVICE = kv_pb2.DESCRIPTOR.services_by_name["KV"].full_name
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class _KV(kv_pb2_grpc.KVServicer):
    """Each method exercises one path through the interceptor."""

    def __init__(self) -> None:
        self.delete_entered = asyncio.Event()
        self.release_delete = asyncio.Event()

    async def Get(self, request: kv_pb2.GetRequest, context: grpc.aio.ServicerContext) -> None:  # type: ignore[override]
        raise E.InvalidArgument("key", "must not be empty")

    async def Put(self, request: kv_pb2.PutRequest, context: grpc.aio.ServicerContext) -> None:  # type: ignore[override]
        raise RuntimeError("boom\nsecret second line")

    async def CompareAndSwap(  # type: ignore[override]
        self, request: kv_pb2.CompareAndSwapRequest, context: grpc.aio.ServicerContext
    ) -> None:
        await context.abort(grpc.StatusCode.FAILED_PRECONDITION, "handler chose this")

    async def Delete(  # type: ignore[override]
        self, request: kv_pb2.DeleteRequest, context: grpc.aio.ServicerContext
    ) -> kv_pb2.DeleteResponse:
        self.delete_entered.set()
        await self.release_delete.wait()
        return kv_pb2.DeleteResponse()

    async def Scan(  # type: ignore[override]
        self, request: kv_pb2.ScanRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[kv_pb2.ScanResponse]:
        yield kv_pb2.ScanResponse(kvs=[types_pb2.KeyValue(key=b"a", value=b"1")])
        if request.limit == 1:
            raise E.Unavailable("no leaseholder", retry_after=0.5)
        raise ValueError("scan exploded")


@pytest.fixture
def log_stream() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    root = logging.getLogger()
    level = root.level
    handler = setup_logging("kvtest", node_id=3, level="WARNING", stream=stream)
    yield stream
    root.removeHandler(handler)
    root.setLevel(level)


def _config(**overrides: object) -> ServerConfig:
    values: dict[str, object] = {"node_id": 3, "shutdown_grace_seconds": 0.0, **overrides}
    return ServerConfig(**values)  # type: ignore[arg-type]


async def _serve(
    body: Callable[[ServiceServer, grpc.aio.Channel, _KV, Telemetry], Awaitable[None]],
    **config: object,
) -> None:
    """Start a server with ``_KV`` on 127.0.0.1:0, run ``body`` against it, stop it."""
    kv = _KV()
    telemetry = Telemetry("kvtest", node_id=3)
    server = ServiceServer(
        "kvtest",
        _config(**config),
        telemetry,
        register=lambda s: kv_pb2_grpc.add_KVServicer_to_server(kv, s),
        service_names=[KV_SERVICE],
    )
    try:
        async with server, grpc.aio.insecure_channel(server.address) as channel:
            await asyncio.wait_for(body(server, channel, kv, telemetry), timeout=20)
    finally:
        telemetry.shutdown()


async def test_errors_become_statuses_without_tracebacks(log_stream: io.StringIO) -> None:
    async def body(server: ServiceServer, channel: grpc.aio.Channel, kv: _KV, t: Telemetry) -> None:
        stub = kv_pb2_grpc.KVStub(channel)

        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.Get(kv_pb2.GetRequest(key=b""), timeout=5)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert info.value.details() == "key: must not be empty"
        decoded = E.from_rpc_error(info.value)
        assert isinstance(decoded, E.InvalidArgument) and decoded.field == "key"

        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.Put(kv_pb2.PutRequest(key=b"k", value=b"v"), timeout=5)
        assert info.value.code() == grpc.StatusCode.INTERNAL
        details = info.value.details() or ""
        assert details == "internal error in /rangekv.v1.KV/Put: RuntimeError: boom"
        assert "Traceback" not in details and "secret" not in details

        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.CompareAndSwap(kv_pb2.CompareAndSwapRequest(key=b"k"), timeout=5)
        assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert info.value.details() == "handler chose this"

        # Streaming: the first response arrives, then the error's status, with the
        # same mapping (and structured details) as for unary calls.
        received = []
        with pytest.raises(grpc.aio.AioRpcError) as info:
            async for response in stub.Scan(kv_pb2.ScanRequest(limit=1), timeout=5):
                received.append(response.kvs[0].key)
        assert received == [b"a"]
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        unavailable = E.from_rpc_error(info.value)
        assert isinstance(unavailable, E.Unavailable) and unavailable.retry_after == 0.5

        received = []
        with pytest.raises(grpc.aio.AioRpcError) as info:
            async for response in stub.Scan(kv_pb2.ScanRequest(limit=2), timeout=5):
                received.append(response.kvs[0].key)
        assert received == [b"a"]
        assert info.value.code() == grpc.StatusCode.INTERNAL
        assert info.value.details() == (
            "internal error in /rangekv.v1.KV/Scan: ValueError: scan exploded"
        )

    await _serve(body)
    lines = log_stream.getvalue().splitlines()
    errors = [line for line in lines if "unhandled exception in /rangekv.v1.KV/Put" in line]
    assert len(errors) == 1
    assert "Traceback" in errors[0] and "secret second line" in errors[0]  # the log has it all


async def test_reflection_and_health() -> None:
    async def body(server: ServiceServer, channel: grpc.aio.Channel, kv: _KV, t: Telemetry) -> None:
        reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
        call = reflection.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5
        )
        names = set()
        async for response in call:
            names |= {s.name for s in response.list_services_response.service}
        assert {KV_SERVICE, "grpc.health.v1.Health"} <= names

        health = health_pb2_grpc.HealthStub(channel)
        for name in ("", KV_SERVICE):
            reply = await health.Check(health_pb2.HealthCheckRequest(service=name), timeout=5)
            assert reply.status == SERVING
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await health.Check(health_pb2.HealthCheckRequest(service="nope"), timeout=5)
        assert info.value.code() == grpc.StatusCode.NOT_FOUND

        # Watch is a coroutine-style streaming handler: it must pass the interceptor intact.
        watch = health.Watch(health_pb2.HealthCheckRequest(service=KV_SERVICE), timeout=5)
        assert (await watch.read()).status == SERVING
        await server.set_not_serving(KV_SERVICE)
        assert (await watch.read()).status == NOT_SERVING
        watch.cancel()
        reply = await health.Check(health_pb2.HealthCheckRequest(service=KV_SERVICE), timeout=5)
        assert reply.status == NOT_SERVING

    await _serve(body)


async def test_probe_services_and_the_plaintext_health_port() -> None:
    """startup / liveness / readiness answer on the main port and on --health-port
    (one servicer); draining turns readiness off and leaves liveness on."""

    async def body(server: ServiceServer, channel: grpc.aio.Channel, kv: _KV, t: Telemetry) -> None:
        assert server.health_address is not None and server.health_address != server.address
        async with grpc.aio.insecure_channel(server.health_address) as health_channel:
            for ch in (channel, health_channel):
                health = health_pb2_grpc.HealthStub(ch)
                for name in PROBES:
                    reply = await health.Check(
                        health_pb2.HealthCheckRequest(service=name), timeout=5
                    )
                    assert reply.status == SERVING, name
            # The health port serves health only.
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await kv_pb2_grpc.KVStub(health_channel).Get(kv_pb2.GetRequest(key=b"k"), timeout=5)
            assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED

            await server.begin_drain()
            health = health_pb2_grpc.HealthStub(health_channel)
            want = {
                PROBE_STARTUP: SERVING,
                PROBE_LIVENESS: SERVING,
                PROBE_READINESS: NOT_SERVING,
                "": NOT_SERVING,
            }
            for name, status in want.items():
                reply = await health.Check(health_pb2.HealthCheckRequest(service=name), timeout=5)
                assert reply.status == status, name

    await _serve(body, health_port=0)


async def test_metrics_endpoint_and_rpc_metrics() -> None:
    async def body(server: ServiceServer, channel: grpc.aio.Channel, kv: _KV, t: Telemetry) -> None:
        t.counter("rangekv_test_calls", "calls").add(3)
        with pytest.raises(grpc.aio.AioRpcError):
            await kv_pb2_grpc.KVStub(channel).Get(kv_pb2.GetRequest(), timeout=5)
        assert server.metrics_port is not None
        url = f"http://127.0.0.1:{server.metrics_port}/metrics"
        text = await asyncio.to_thread(_fetch, url)
        assert "rangekv_test_calls_total 3.0" in text
        assert (
            'rangekv_rpc_server_duration_seconds_count{code="INVALID_ARGUMENT",'
            'method="/rangekv.v1.KV/Get"} 1.0'
        ) in text
        assert t.event_loop_monitor is not None  # started by the server, with the endpoint

    await _serve(body)


def _fetch(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:
        return str(response.read().decode())


async def test_ready_line_printed_exactly_once(log_stream: io.StringIO) -> None:
    seen: dict[str, str] = {}

    async def body(server: ServiceServer, channel: grpc.aio.Channel, kv: _KV, t: Telemetry) -> None:
        seen["grpc"] = server.address
        seen["metrics"] = f"127.0.0.1:{server.metrics_port}"
        with pytest.raises(RuntimeError, match="already started"):
            await server.start()
        await server.set_serving()

    await _serve(body)
    ready = [line for line in log_stream.getvalue().splitlines() if " ready: " in line]
    assert len(ready) == 1, ready  # logged although the level is WARNING
    assert f"rangekv kvtest ready: node=3 grpc={seen['grpc']} metrics={seen['metrics']}" in ready[0]
    assert parse_ready_line(ready[0]) == {"service": "kvtest", "node": "3", "tls": "off", **seen}


async def test_ready_line_in_json_with_metrics_disabled() -> None:
    stream = io.StringIO()
    root = logging.getLogger()
    level = root.level
    handler = setup_logging("kvtest", node_id=3, fmt="json", stream=stream)

    async def body(server: ServiceServer, channel: grpc.aio.Channel, kv: _KV, t: Telemetry) -> None:
        assert server.metrics_port is None

    try:
        await _serve(body, metrics_port=-1)
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
    ready = [parse_ready_line(line) for line in stream.getvalue().splitlines()]
    found = [fields for fields in ready if fields is not None]
    assert len(found) == 1 and found[0]["metrics"] == "disabled"


async def test_sigterm_drains_in_flight_rpcs_then_stops() -> None:
    kv = _KV()
    telemetry = Telemetry("kvtest")
    server = ServiceServer(
        "kvtest",
        _config(shutdown_grace_seconds=10.0),
        telemetry,
        register=lambda s: kv_pb2_grpc.add_KVServicer_to_server(kv, s),
        service_names=[KV_SERVICE],
    )
    previous = signal.getsignal(signal.SIGTERM)
    run = asyncio.create_task(server.run_until_signalled())
    try:
        await asyncio.wait_for(server.signal_handlers_installed.wait(), timeout=5)
        async with grpc.aio.insecure_channel(server.address) as channel:
            in_flight = asyncio.ensure_future(
                kv_pb2_grpc.KVStub(channel).Delete(kv_pb2.DeleteRequest(key=b"k"), timeout=10)
            )
            await asyncio.wait_for(kv.delete_entered.wait(), timeout=5)
            os.kill(os.getpid(), signal.SIGTERM)
            await asyncio.wait_for(server.stop_requested.wait(), timeout=5)
            assert not run.done()  # draining: the in-flight Delete holds the grace period
            kv.release_delete.set()
            assert isinstance(await in_flight, kv_pb2.DeleteResponse)
            await asyncio.wait_for(run, timeout=10)
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await kv_pb2_grpc.KVStub(channel).Get(kv_pb2.GetRequest(), timeout=2)
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        if not run.done():
            server.request_stop()
            await run
        telemetry.shutdown()
    assert signal.getsignal(signal.SIGTERM) == previous
