"""The grpc.aio server scaffolding every rangekv service runs in.

:class:`ServiceServer` gives each service the same outside: gRPC reflection and
``grpc.health.v1`` (so ``grpcurl`` and Kubernetes probes need nothing from this
repository), mutual TLS with a role check on every call (rangekv.common.tls,
rangekv.common.auth; plaintext only with --insecure), an optional plaintext
health-only port for probes, the same message-size, stream and keepalive limits,
a default deadline for calls that carry none, a Prometheus endpoint, one ready line, and a graceful stop on SIGTERM/SIGINT that first
flips health to NOT_SERVING (so load balancers drain) and then lets in-flight
RPCs finish within a grace period::

    server = ServiceServer(
        "gateway", config, telemetry,
        register=lambda s: kv_pb2_grpc.add_KVServicer_to_server(servicer, s),
        service_names=[kv_pb2.DESCRIPTOR.services_by_name["KV"].full_name],
    )
    await server.run_until_signalled()

Kubernetes probes ask ``grpc.health.v1`` for three service names with distinct
meanings (constants below), never for the services themselves:

- ``rangekv.startup``: the process has finished starting (state loaded, ports
  bound). Until it does, the kubelet holds back the other two probes.
- ``rangekv.liveness``: the event loop answers. It never depends on peers, a
  quorum or the meta range: a node cut off from its peers must not be
  restarted for it (that would only add restarts to a partition). It stays
  SERVING while the process drains on SIGTERM, however long that takes.
- ``rangekv.readiness``: the process serves. NOT_SERVING while it drains
  (:meth:`ServiceServer.begin_drain`) so Services stop routing to it. Not
  dependent on peers either, so that pods which start together never wait for
  each other (no ``helm install --wait`` deadlock).

``--health-port`` adds a plaintext port serving only that health servicer (the
same one, so both ports always agree): Kubernetes gRPC probes cannot speak TLS.

:class:`ErrorInterceptor` is the one place where an exception escaping a handler
becomes a status: a :class:`~rangekv.common.errors.RangeKVError` becomes its own
status with structured details (``to_rpc_status``); anything else is a bug and
becomes INTERNAL with a one-line message, the traceback going to the log only.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import signal
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextvars import Token
from typing import Any, NoReturn

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.context import Context

from rangekv.common.auth import Authorizer, Caller, set_caller
from rangekv.common.certs import Role
from rangekv.common.config import ServerConfig
from rangekv.common.errors import RangeKVError, to_rpc_status
from rangekv.common.logs import log_ready
from rangekv.common.rpc_guards import (
    Undecodable,
    checked_stream,
    default_deadline_error,
    on_loop,
    tolerant_deserializer,
)
from rangekv.common.telemetry import EventLoopLagMonitor, Histogram, Telemetry
from rangekv.common.tls import ServerCredentialsSource

HEALTH_SERVICE = health.SERVICE_NAME
PROBE_STARTUP = "rangekv.startup"
PROBE_READINESS = "rangekv.readiness"
PROBE_LIVENESS = "rangekv.liveness"
PROBES = (PROBE_STARTUP, PROBE_READINESS, PROBE_LIVENESS)
REFLECTION_SERVICE = reflection.SERVICE_NAME
RPC_DURATION = "rangekv_rpc_server_duration_seconds"
_MAX_DETAIL = 200

Register = Callable[[grpc.aio.Server], None]


def server_options(
    max_message_bytes: int, max_concurrent_streams: int = 256
) -> list[tuple[str, Any]]:
    """Channel arguments every rangekv server uses, and why.

    - message sizes: raft snapshots and batch responses exceed gRPC's 4 MiB default;
      and a bound, so one message cannot take the process's memory;
    - concurrent streams per connection: one client cannot open calls without end;
    - keepalive: detect dead peers (a crashed node, a dropped NAT mapping) within
      ~40 s instead of at the next write, and accept the clients' own pings;
    - no SO_REUSEPORT: a second process on the same fixed port must fail to
      start rather than silently share the port.
    """
    return [
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_concurrent_streams", max_concurrent_streams),
        ("grpc.keepalive_time_ms", 30_000),
        ("grpc.keepalive_timeout_ms", 10_000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
        ("grpc.http2.max_pings_without_data", 0),
        ("grpc.so_reuseport", 0),
    ]


def join_host_port(host: str, port: int) -> str:
    """``host:port``, with brackets around an IPv6 literal."""
    return f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"


def internal_message(method: str, exc: BaseException) -> str:
    """The one-line INTERNAL message: where and what, never a traceback."""
    text = str(exc).strip().splitlines()
    first = text[0] if text else ""
    if len(first) > _MAX_DETAIL:
        first = first[:_MAX_DETAIL] + "..."
    what = f"{type(exc).__name__}: {first}" if first else type(exc).__name__
    return f"internal error in {method}: {what}"


def _context_code(context: grpc.aio.ServicerContext) -> str:
    try:
        code = context.code()
    except Exception:  # older grpc or an unusual context: the metric label is best effort
        return "UNKNOWN"
    return code.name if isinstance(code, grpc.StatusCode) else "UNKNOWN"


class ErrorInterceptor(grpc.aio.ServerInterceptor):
    """Turns exceptions escaping any handler into statuses; times and traces every RPC.

    Works for all four handler shapes. A streaming-response handler keeps its
    shape (async generator, or coroutine writing with ``context.write``) because
    grpc.aio dispatches on it. Synchronous handlers are passed through untouched
    (they run on grpc's executor, outside this interceptor's reach).
    ``context.abort(...)`` inside a handler is not an error here: its
    ``AbortError`` passes through with the status the handler chose.
    """

    def __init__(
        self,
        logger: logging.Logger,
        telemetry: Telemetry | None = None,
        *,
        authorizer: Authorizer | None = None,
        default_deadline: float | None = None,
    ) -> None:
        self._log = logger
        self._authorizer = authorizer
        self._default_deadline = default_deadline
        self._clock = telemetry.clock if telemetry is not None else None
        # None when tracing is off: then no carrier is parsed and no span is built.
        self._tracer: trace.Tracer | None = telemetry.active_tracer if telemetry else None
        self._duration: Histogram | None = None
        self._wrapped: dict[str, grpc.RpcMethodHandler] = {}
        if telemetry is not None:
            self._duration = telemetry.histogram(
                RPC_DURATION,
                "Server-side RPC latency by method and final status code",
                unit="s",
                labels=("method", "code"),
            )

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Any],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        method: str = handler_call_details.method
        cached = self._wrapped.get(method)
        if cached is not None:
            return cached
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        wrapped = self._wrap_handler(handler, method)
        # A method's handler never changes while the server runs, so it is wrapped
        # once (the per-call inspection and handler building cost ~20 us per RPC).
        self._wrapped[method] = wrapped
        return wrapped

    def _wrap_handler(self, handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                self._wrap(handler.unary_unary, method, bounded=True),
                request_deserializer=tolerant_deserializer(handler.request_deserializer, method),
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                self._wrap(handler.unary_stream, method, bounded=True),
                request_deserializer=tolerant_deserializer(handler.request_deserializer, method),
                response_serializer=handler.response_serializer,
            )
        if handler.stream_unary is not None:
            return grpc.stream_unary_rpc_method_handler(
                self._wrap(handler.stream_unary, method),
                request_deserializer=tolerant_deserializer(handler.request_deserializer, method),
                response_serializer=handler.response_serializer,
            )
        if handler.stream_stream is not None:
            return grpc.stream_stream_rpc_method_handler(
                self._wrap(handler.stream_stream, method),
                request_deserializer=tolerant_deserializer(handler.request_deserializer, method),
                response_serializer=handler.response_serializer,
            )
        return handler  # type: ignore[no-any-return]

    def _wrap(
        self, behavior: Callable[..., Any], method: str, *, bounded: bool = False
    ) -> Callable[..., Any]:
        """``bounded``: a unary-request call, given the default deadline when it has none."""
        role = self._authorizer.required(method) if self._authorizer is not None else None
        deadline = self._default_deadline if bounded else None
        if inspect.isasyncgenfunction(behavior):
            return self._wrap_generator(behavior, method, role, deadline)
        if inspect.iscoroutinefunction(behavior):
            return self._wrap_coroutine(behavior, method, role, deadline)
        if role is not None and not bounded:
            # A synchronous stream handler: nothing here can check its caller. Refuse it.
            async def refuse(request: Any, context: grpc.aio.ServicerContext) -> Any:
                await context.abort(
                    grpc.StatusCode.UNIMPLEMENTED, f"{method}: not served on a secure server"
                )

            return refuse
        if role is not None:
            # A synchronous unary handler (grpc's aio Health.List is one): checked, then
            # run on the loop like the rest (such handlers only read in-memory state).
            return self._wrap_coroutine(on_loop(behavior), method, role, deadline)
        return behavior

    def _admit(
        self, method: str, role: Role | None, request: Any, context: grpc.aio.ServicerContext
    ) -> Any:
        """Check the caller, then the request: the request (a stream's iterator checked
        message by message) if both are fine; raise otherwise."""
        if role is not None and self._authorizer is not None:
            identity = self._authorizer.check(method, role, context)
            set_caller(Caller(method, identity, self._authorizer))
        if isinstance(request, Undecodable):
            raise request.error()
        if hasattr(request, "__aiter__"):
            return checked_stream(request)
        return request

    @staticmethod
    def _timeout(deadline: float | None, context: grpc.aio.ServicerContext) -> Any:
        if deadline is None or context.time_remaining() is not None:
            return contextlib.nullcontext()
        return asyncio.timeout(deadline)

    def _wrap_coroutine(
        self,
        behavior: Callable[..., Any],
        method: str,
        role: Role | None = None,
        deadline: float | None = None,
    ) -> Callable[..., Any]:
        async def handle(request: Any, context: grpc.aio.ServicerContext) -> Any:
            with self._observe(method, context) as outcome:
                bound = None
                try:
                    request = self._admit(method, role, request, context)
                    async with self._timeout(deadline, context) as bound:
                        return await behavior(request, context)
                except grpc.aio.AbortError:
                    outcome["code"] = _context_code(context)
                    raise
                except Exception as exc:
                    await self._fail(exc, bound, method, deadline, outcome, context)

        return handle

    def _wrap_generator(
        self,
        behavior: Callable[..., Any],
        method: str,
        role: Role | None = None,
        deadline: float | None = None,
    ) -> Callable[..., Any]:
        async def handle(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            with self._observe(method, context) as outcome:
                bound = None
                try:
                    request = self._admit(method, role, request, context)
                    async with (
                        self._timeout(deadline, context) as bound,
                        contextlib.aclosing(behavior(request, context)) as responses,
                    ):
                        async for response in responses:
                            yield response
                except grpc.aio.AbortError:
                    outcome["code"] = _context_code(context)
                    raise
                except Exception as exc:
                    await self._fail(exc, bound, method, deadline, outcome, context)

        return handle

    async def _fail(
        self,
        exc: Exception,
        bound: object,
        method: str,
        deadline: float | None,
        outcome: dict[str, str],
        context: grpc.aio.ServicerContext,
    ) -> None:
        """The one way a handler's exception leaves: mapped once (a server-side default
        deadline that fired becomes DEADLINE_EXCEEDED), counted under its code, aborted."""
        exc = default_deadline_error(exc, bound, method, deadline)
        outcome["code"] = self._code_for(exc)
        await self._abort(exc, method, context)

    @staticmethod
    def _code_for(exc: Exception) -> str:
        if isinstance(exc, NotImplementedError):
            return "UNIMPLEMENTED"
        return exc.code.name if isinstance(exc, RangeKVError) else "INTERNAL"

    @contextlib.contextmanager
    def _observe(self, method: str, context: grpc.aio.ServicerContext) -> Any:
        """Span (when tracing) and latency for one RPC; the body reports a non-OK code
        in ``outcome``. The span is the current span while the handler runs, so the
        spans the handler starts are its children."""
        outcome = {"code": "OK"}
        start = self._clock() if self._clock is not None else 0.0
        span: trace.Span | None = None
        token: Token[Context] | None = None
        if self._tracer is not None:
            metadata = context.invocation_metadata() or ()
            parent = propagate.extract(
                {key: value for key, value in metadata if isinstance(value, str)}
            )
            span = self._tracer.start_span(method, context=parent, kind=trace.SpanKind.SERVER)
            token = otel_context.attach(trace.set_span_in_context(span))
        try:
            yield outcome
        except asyncio.CancelledError:
            outcome["code"] = "CANCELLED"
            raise
        finally:
            if span is not None:
                span.set_attribute("rpc.grpc.status_code", outcome["code"])
                if outcome["code"] != "OK":
                    span.set_status(trace.Status(trace.StatusCode.ERROR, outcome["code"]))
                span.end()
            if token is not None:
                otel_context.detach(token)
            if self._duration is not None and self._clock is not None:
                self._duration.record(self._clock() - start, method=method, code=outcome["code"])

    async def _abort(
        self, exc: Exception, method: str, context: grpc.aio.ServicerContext
    ) -> NoReturn:
        if isinstance(exc, RangeKVError):
            if exc.code is grpc.StatusCode.INTERNAL:
                self._log.error("internal error in %s: %s", method, exc.message, exc_info=exc)
            else:
                self._log.debug("%s failed: %s %s", method, exc.code.name, exc.message)
            await context.abort_with_status(to_rpc_status(exc))
        elif isinstance(exc, NotImplementedError):
            # A generated servicer's default method (e.g. grpc's aio Health.List).
            await context.abort(grpc.StatusCode.UNIMPLEMENTED, f"{method} is not implemented")
        elif _server_stopping(exc):
            # The server is shutting down under a stream still being read: not a
            # bug, and nobody is left to answer.
            self._log.debug("%s ended: the server is stopping", method)
            await context.abort(grpc.StatusCode.UNAVAILABLE, "the server is stopping")
        else:
            self._log.error("unhandled exception in %s", method, exc_info=exc)
            await context.abort(grpc.StatusCode.INTERNAL, internal_message(method, exc))
        raise AssertionError("context.abort returned")  # pragma: no cover


def _server_stopping(exc: BaseException) -> bool:
    """Whether `exc` is grpc's "server already stopped" (a stream read during shutdown)."""
    return type(exc).__name__ == "_ServerStoppedError"


class ServiceServer:
    """One gRPC service process's server: build, bind, announce, serve, stop.

    ``register`` adds the service's servicers to the grpc.aio server;
    ``service_names`` are their full names (``rangekv.v1.KV``), published through
    reflection and given a health status each. Health and reflection are always
    added. ``port``, ``address`` and ``metrics_port`` are the bound values, known
    after :meth:`start` (so port 0 works for tests and the dev launcher).
    """

    def __init__(
        self,
        service: str,
        config: ServerConfig,
        telemetry: Telemetry,
        *,
        register: Register,
        service_names: Sequence[str],
        logger: logging.Logger | None = None,
        interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
        extra_options: Sequence[tuple[str, Any]] = (),
        initially_serving: bool = True,
    ) -> None:
        self.service = service
        self.config = config
        self.telemetry = telemetry
        self.service_names = tuple(service_names)
        self.health = health.aio.HealthServicer()
        self.port: int | None = None
        self.metrics_port: int | None = None
        self.health_port: int | None = None
        self.draining = False
        self.stop_requested = asyncio.Event()
        self.signal_handlers_installed = asyncio.Event()
        self._register = register
        self._log = logger or logging.getLogger(f"rangekv.{service}")
        self._interceptors = tuple(interceptors)
        self._extra_options = tuple(extra_options)
        self._initially_serving = initially_serving
        self._server: grpc.aio.Server | None = None
        self._health_server: grpc.aio.Server | None = None
        #: The reloading server credentials, when secure (after :meth:`start`).
        self.credentials: ServerCredentialsSource | None = None
        self._monitor: EventLoopLagMonitor | None = None
        self._stopped = False

    @property
    def address(self) -> str:
        """``host:port`` the gRPC server is bound to (after :meth:`start`)."""
        if self.port is None:
            raise RuntimeError("server not started")
        return join_host_port(self.config.listen_host, self.port)

    @property
    def health_address(self) -> str | None:
        """``host:port`` of the plaintext health port, if one is configured."""
        if self.health_port is None:
            return None
        return join_host_port(self.config.listen_host, self.health_port)

    @property
    def metrics_address(self) -> str | None:
        if self.metrics_port is None:
            return None
        return join_host_port(self.config.metrics_host, self.metrics_port)

    # --- health --------------------------------------------------------------------

    async def set_serving(self, service_name: str = "") -> None:
        """Report ``service_name`` ("" = the whole server) as SERVING."""
        await self.health.set(service_name, health_pb2.HealthCheckResponse.SERVING)

    async def set_not_serving(self, service_name: str = "") -> None:
        """Report ``service_name`` ("" = the whole server) as NOT_SERVING, e.g. while catching up."""
        await self.health.set(service_name, health_pb2.HealthCheckResponse.NOT_SERVING)

    async def begin_drain(self) -> None:
        """Stop being ready (Services stop routing here) while staying alive and
        serving what still arrives: the first step of a graceful shutdown."""
        if self.draining:
            return
        self.draining = True
        for name in ("", *self.service_names, PROBE_READINESS):
            await self.set_not_serving(name)

    # --- lifecycle -----------------------------------------------------------------

    async def start(self) -> None:  # noqa: C901 -- server assembly, one optional part (TLS, health port, reflection, metrics) after another
        """Build and bind the server, start it and the metrics, then log the ready line.

        The ready line is logged last, once everything it names is listening, and
        only once per server.
        """
        if self._server is not None:
            raise RuntimeError(f"{self.service} server already started")
        security = self.config.security
        credentials = None
        authorizer = None
        if not security.insecure:
            self.credentials = ServerCredentialsSource(security.node_files(), self._log)
            credentials = self.credentials.credentials()
            authorizer = Authorizer(self.telemetry)
        interceptor = ErrorInterceptor(
            self._log,
            self.telemetry,
            authorizer=authorizer,
            default_deadline=self.config.default_deadline_seconds,
        )
        server = grpc.aio.server(
            interceptors=[interceptor, *self._interceptors],
            options=[
                *server_options(self.config.max_message_bytes, self.config.max_concurrent_streams),
                *self._extra_options,
            ],
        )
        self._server = server
        self._register(server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        reflection.enable_server_reflection(
            [*self.service_names, HEALTH_SERVICE, REFLECTION_SERVICE], server
        )
        for name in ("", *self.service_names, PROBE_READINESS):
            if self._initially_serving:
                await self.set_serving(name)
            else:
                await self.set_not_serving(name)
        await self.set_serving(PROBE_LIVENESS)
        bind = join_host_port(self.config.listen_host, self.config.listen_port)
        try:
            if credentials is None:
                port = server.add_insecure_port(bind)
            else:
                port = server.add_secure_port(bind, credentials)
        except RuntimeError as exc:
            raise OSError(f"{self.service}: cannot bind gRPC server to {bind}: {exc}") from None
        if port == 0:
            raise OSError(f"{self.service}: cannot bind gRPC server to {bind}")
        self.port = port
        await server.start()
        try:
            if self.config.health_port_enabled:
                await self._start_health_server()
            if self.config.metrics_enabled:
                self.metrics_port = self.telemetry.serve_metrics(
                    self.config.metrics_port, self.config.metrics_host
                )
            if self.telemetry.event_loop_monitor is None:
                self._monitor = self.telemetry.start_event_loop_monitor()
        except BaseException:
            await self._teardown(grace=0)
            raise
        extra: dict[str, Any] = {}
        if self.config.node_id:
            extra["node"] = self.config.node_id
        extra["metrics"] = self.metrics_address or "disabled"
        if self.health_port is not None:
            extra["health"] = join_host_port(self.config.listen_host, self.health_port)
        extra["tls"] = "off" if security.insecure else "mtls"
        await self.set_serving(PROBE_STARTUP)
        log_ready(self._log, self.service, self.address, **extra)

    async def _start_health_server(self) -> None:
        """The plaintext probe port: ``grpc.health.v1`` and nothing else.

        Kubernetes gRPC probes cannot present a certificate, so health also
        answers here, from the same servicer (same names, same statuses). Small
        limits: probes send tiny messages and few at a time.
        """
        health_server = grpc.aio.server(
            interceptors=[
                ErrorInterceptor(self._log, default_deadline=self.config.default_deadline_seconds)
            ],
            options=[*server_options(64 * 1024, max_concurrent_streams=16)],
        )
        health_pb2_grpc.add_HealthServicer_to_server(self.health, health_server)
        bind = join_host_port(self.config.listen_host, self.config.health_port)
        try:
            port = health_server.add_insecure_port(bind)
        except RuntimeError as exc:
            raise OSError(f"{self.service}: cannot bind health port to {bind}: {exc}") from None
        if port == 0:
            raise OSError(f"{self.service}: cannot bind health port to {bind}")
        await health_server.start()
        self._health_server = health_server
        self.health_port = port

    async def stop(self, grace: float | None = None) -> None:
        """Drain and stop: health NOT_SERVING, refuse new RPCs, wait up to ``grace``.

        ``grace`` defaults to the configured ``shutdown_grace_seconds``. Idempotent.
        """
        if self._server is None or self._stopped:
            self.stop_requested.set()
            return
        self._stopped = True
        self.stop_requested.set()
        grace = self.config.shutdown_grace_seconds if grace is None else grace
        self._log.info("%s stopping (grace %.1fs)", self.service, grace)
        await self.health.enter_graceful_shutdown()
        await self._teardown(grace)
        self._log.info("%s stopped", self.service)

    async def _teardown(self, grace: float) -> None:
        if self._server is not None:
            await self._server.stop(grace)
        if self._health_server is not None:
            await self._health_server.stop(0)
        if self._monitor is not None:
            await self._monitor.stop()
            self._monitor = None
        await asyncio.to_thread(self.telemetry.stop_metrics_server)

    async def wait_for_termination(self) -> None:
        """Wait until the server has stopped (by :meth:`stop` or otherwise)."""
        if self._server is not None:
            await self._server.wait_for_termination()

    def request_stop(self) -> None:
        """Ask :meth:`run_until_signalled` to stop, as a signal would."""
        self.stop_requested.set()

    async def run_until_signalled(
        self,
        grace: float | None = None,
        signals: Sequence[signal.Signals] = (signal.SIGTERM, signal.SIGINT),
        before_stop: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        """Start (if needed), serve until SIGTERM/SIGINT or :meth:`request_stop`, stop.

        Handlers are installed with ``loop.add_signal_handler`` so the signal is
        handled on the event loop, never in the middle of a handler, and are
        removed again before returning. ``signal_handlers_installed`` is set once
        a signal would be handled cleanly. ``before_stop`` runs after the stop
        request and before the server stops, still serving (a raftnode hands its
        leases away there); an error in it is logged, and the server stops anyway.
        """
        if self._server is None:
            await self.start()
        loop = asyncio.get_running_loop()
        installed: list[signal.Signals] = []
        try:
            for sig in signals:
                loop.add_signal_handler(sig, self._on_signal, sig)
                installed.append(sig)
            self.signal_handlers_installed.set()
            await self.stop_requested.wait()
            if before_stop is not None:
                try:
                    await before_stop()
                except Exception:
                    self._log.exception("%s: graceful shutdown step failed", self.service)
        finally:
            for sig in installed:
                loop.remove_signal_handler(sig)
            self.signal_handlers_installed.clear()
            await self.stop(grace)

    def _on_signal(self, sig: signal.Signals) -> None:
        self._log.info("%s received %s", self.service, sig.name)
        self.stop_requested.set()

    async def __aenter__(self) -> ServiceServer:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()


__all__ = [
    "HEALTH_SERVICE",
    "PROBES",
    "PROBE_LIVENESS",
    "PROBE_READINESS",
    "PROBE_STARTUP",
    "REFLECTION_SERVICE",
    "RPC_DURATION",
    "ErrorInterceptor",
    "Register",
    "ServiceServer",
    "internal_message",
    "join_host_port",
    "server_options",
]
