"""Metrics (OpenTelemetry, exposed for Prometheus), traces, and the event-loop lag monitor.

Each process creates ONE :class:`Telemetry` and passes it down to whatever
records metrics. Nothing here touches OpenTelemetry's global providers or
prometheus_client's global registry: every ``Telemetry`` owns a private
``MeterProvider``, ``CollectorRegistry`` and (optionally) ``TracerProvider``, so
an in-process test cluster can run several nodes side by side, each with its own
``/metrics``.

Instruments are declared with fixed names and label sets
(``telemetry.counter("rangekv_reads", "...", labels=("outcome",))``). The name you
write is the name you grep for in Prometheus: counters gain only the
``_total`` suffix Prometheus requires, and a unit's suffix must already be part of
the name (``rangekv_raft_apply_seconds`` with ``unit="s"``). Recording with a
different label set is a ``ValueError`` rather than a silently new time series,
which keeps cardinality what the declaration says. Recording is cheap (a dict
update; see :mod:`rangekv.common.metrics` for why and how the totals reach
the endpoint), so hot paths may record freely.

Traces are off by default. To turn them on, install the optional exporter
(``pip install 'rangekv[otlp]'``, i.e. ``opentelemetry-exporter-otlp-proto-grpc``)
and give every process an OTLP/gRPC collector: ``--otlp-endpoint
http://127.0.0.1:4317`` or ``RANGEKV_OTLP_ENDPOINT`` (so ``RANGEKV_OTLP_ENDPOINT=...
rangekv dev`` traces a whole local cluster). Spans are batched and exported in
the background (``OTEL_BSP_SCHEDULE_DELAY`` and the other standard
``OTEL_BSP_*`` variables tune that) and flushed by :meth:`Telemetry.shutdown`.
An endpoint without the package logs a warning and leaves tracing off.

A client request is ONE trace: the gateway's server span for the KV call, a
``node.batch`` client span per call to a node, the node's ``replica.batch``
span, and under it ``raft.commit`` (proposal until applied) for writes and
``read.lease`` / ``read.read_index`` for reads. The gateway sends many client
requests to a node in one stream message, so per-call gRPC metadata cannot carry
their contexts: each request's W3C ``traceparent`` travels in the batch
(``ReplicaBatchRequest.traceparents``), and work shared by several requests is
recorded once in each of their traces (:class:`SpanSet`).

Tracing must cost nothing when it is off, because the request path is CPU
bound: :attr:`Telemetry.tracing` is decided once, components are handed
:attr:`Telemetry.active_tracer` (None when off) and check it once per request,
so no carrier, string or span object is built for an untraced request.
"""

from __future__ import annotations

import asyncio
import logging
import re
import socket
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from prometheus_client import CollectorRegistry, generate_latest, make_wsgi_app

from rangekv.common.metrics import (
    BoundCounter,
    BoundHistogram,
    Counter,
    Histogram,
    HistogramCollector,
    Instrument,
    Timer,
    UpDownCounter,
)
from rangekv.common.tasks import cancel_and_wait

SECONDS_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
"""Default histogram boundaries for ``unit="s"``: sub-millisecond apply paths up to
multi-second stalls (OpenTelemetry's own defaults assume milliseconds)."""
BYTES_BUCKETS = tuple(float(64 * 4**i) for i in range(11))  # 64 B .. 64 MiB
"""Default histogram boundaries for ``unit="By"``."""
DEFAULT_BUCKETS = (
    0.0, 5.0, 10.0, 25.0, 50.0, 75.0, 100.0, 250.0, 500.0, 750.0, 1000.0, 2500.0, 5000.0,
    7500.0, 10000.0,
)  # fmt: skip
"""OpenTelemetry's default explicit boundaries, for histograms of other units."""

EVENT_LOOP_LAG = "rangekv_event_loop_lag_seconds"

_NAME = re.compile(r"^rangekv_[a-z][a-z0-9_]*[a-z0-9]$")
_LABEL = re.compile(r"^[a-z_][a-z0-9_]*$")
_UNIT_SUFFIX = {"": "", "1": "", "s": "_seconds", "By": "_bytes"}
_RESERVED_LABELS = frozenset({"amount", "value", "self"})


class _Gauge(Instrument):
    kind = "observable_gauge"


GaugeReading = float | Mapping[tuple[str, ...], float]
"""What a gauge callback returns: one value (no labels), or values keyed by label
values in the declared label order."""


class _ThreadingWSGIServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Scrapes every few seconds are not worth a log line each."""


class EventLoopLagMonitor:
    """Measures how late the event loop runs a callback scheduled every ``interval``.

    A replica's heartbeats, lease checks and group commits all run on the one
    event loop; any synchronous stretch (a big RocksDB batch, a slow protobuf
    parse) delays them all. The lag of a periodic wake-up is the most direct
    measure of that, recorded in ``rangekv_event_loop_lag_seconds``.

    ``clock`` is injectable so tests can drive the measurement; ``samples``,
    ``last_lag`` and ``max_lag`` plus the ``updated`` condition let a caller wait
    for a measurement instead of sleeping.
    """

    def __init__(
        self, histogram: Histogram, *, interval: float = 0.1, clock: Timer = time.monotonic
    ) -> None:
        if interval <= 0:
            raise ValueError(f"interval must be > 0, got {interval}")
        self._histogram = histogram.bind()
        self._interval = interval
        self._clock = clock
        self._task: asyncio.Task[None] | None = None
        self.samples = 0
        self.last_lag = 0.0
        self.max_lag = 0.0
        self.updated = asyncio.Condition()

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def start(self) -> None:
        """Start measuring on the running event loop."""
        if self.running:
            raise RuntimeError("event-loop lag monitor already running")
        loop = asyncio.get_running_loop()
        self._task = loop.create_task(self._run(), name="rangekv-event-loop-lag")

    async def _run(self) -> None:
        while True:
            due = self._clock() + self._interval
            await asyncio.sleep(self._interval)
            await self._observe(max(0.0, self._clock() - due))

    async def _observe(self, lag: float) -> None:
        self._histogram.record(lag)
        async with self.updated:
            self.samples += 1
            self.last_lag = lag
            self.max_lag = max(self.max_lag, lag)
            self.updated.notify_all()

    async def wait_until(
        self, predicate: Callable[[EventLoopLagMonitor], bool], timeout: float
    ) -> None:
        """Wait until ``predicate(self)`` holds after some sample; TimeoutError after ``timeout``."""
        async with asyncio.timeout(timeout), self.updated:
            await self.updated.wait_for(lambda: predicate(self))

    def cancel(self) -> None:
        """Stop without waiting (for synchronous shutdown paths)."""
        if self._task is not None:
            self._task.cancel()

    async def stop(self) -> None:
        """Stop and wait for the measuring task to finish."""
        task, self._task = self._task, None
        await cancel_and_wait([task])


def _make_tracer(
    resource: Resource, otlp_endpoint: str | None, log: logging.Logger
) -> tuple[TracerProvider | None, trace.Tracer]:
    """A real tracer exporting to ``otlp_endpoint`` if possible, else a no-op one."""
    if not otlp_endpoint:
        return None, trace.NoOpTracer()
    try:
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    except ImportError:
        log.warning(
            "otlp endpoint %s configured but opentelemetry-exporter-otlp-proto-grpc is not "
            "installed; traces are disabled",
            otlp_endpoint,
        )
        return None, trace.NoOpTracer()
    provider = TracerProvider(resource=resource, shutdown_on_exit=False)
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=otlp_endpoint)))
    return provider, provider.get_tracer("rangekv")


_TRACE_CONTEXT = TraceContextTextMapPropagator()
"""W3C trace context only: the wire field is one traceparent per request (no
baggage, no vendor formats), whatever the global propagator is set to."""


def traceparent(span: trace.Span) -> str:
    """The W3C ``traceparent`` naming ``span`` as the parent ("" if it is not recording)."""
    carrier: dict[str, str] = {}
    _TRACE_CONTEXT.inject(carrier, context=trace.set_span_in_context(span))
    return carrier.get("traceparent", "")


def context_from_traceparent(value: str) -> Context:
    """A context whose current span is the remote parent ``value`` names.

    A malformed value gives an empty context, so the span started under it
    begins a new trace rather than failing the request.
    """
    return _TRACE_CONTEXT.extract({"traceparent": value})


def end_span_with(span: trace.Span, done: asyncio.Future[Any]) -> None:
    """End ``span`` with the outcome of ``done`` (a done-callback for client spans)."""
    if done.cancelled():
        span.set_status(trace.Status(trace.StatusCode.ERROR, "cancelled"))
    elif (exc := done.exception()) is not None:
        span.record_exception(exc)
        span.set_status(trace.Status(trace.StatusCode.ERROR, type(exc).__name__))
    span.end()


class SpanSet:
    """One step of shared work, recorded as a span in every trace it serves.

    The gateway merges concurrent client requests into one node batch, and the
    node merges batches into one raft command, so one step belongs to several
    traces. A span has one parent; rather than pick one trace and leave the
    others with a hole, the step is recorded once per trace, the spans starting
    and ending together. Built only when tracing is on (and only for batches
    that carry traceparents), so its cost is never paid on the untraced path.

    Use as a context manager: an exception escaping the block marks every span
    as failed (and is re-raised).
    """

    __slots__ = ("_tracer", "spans")

    def __init__(self, tracer: trace.Tracer, spans: list[trace.Span]) -> None:
        self._tracer = tracer
        self.spans = spans

    @classmethod
    def start(
        cls,
        tracer: trace.Tracer,
        name: str,
        traceparents: Iterable[str],
        *,
        kind: trace.SpanKind = trace.SpanKind.INTERNAL,
        attributes: Mapping[str, str | int | bool] | None = None,
    ) -> SpanSet:
        """A span named ``name`` under each distinct remote parent."""
        spans = [
            tracer.start_span(
                name, context=context_from_traceparent(tp), kind=kind, attributes=attributes
            )
            for tp in dict.fromkeys(traceparents)
        ]
        return cls(tracer, spans)

    def child(self, name: str, attributes: Mapping[str, str | int | bool] | None = None) -> SpanSet:
        """A child of every span of this set (started now)."""
        return SpanSet(
            self._tracer,
            [
                self._tracer.start_span(
                    name, context=trace.set_span_in_context(span), attributes=attributes
                )
                for span in self.spans
            ],
        )

    def set_attribute(self, key: str, value: str | int | bool) -> None:
        for span in self.spans:
            span.set_attribute(key, value)

    def update_name(self, name: str) -> None:
        for span in self.spans:
            span.update_name(name)

    def fail(self, exc: BaseException) -> None:
        """Mark every span failed by ``exc`` (an error answered in-band counts too)."""
        for span in self.spans:
            span.record_exception(exc)
            span.set_status(trace.Status(trace.StatusCode.ERROR, type(exc).__name__))

    def end(self) -> None:
        for span in self.spans:
            span.end()

    def __enter__(self) -> SpanSet:
        return self

    def __exit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        if exc is not None:
            self.fail(exc)
        self.end()


class Telemetry:
    """One process's metrics registry, tracer and metrics endpoint.

    Create it once in ``main`` and pass it to every component that records
    anything. Instruments are cached by name: declaring the same instrument twice
    (same kind, same labels) returns the first one, so components may declare
    what they use without coordinating; a conflicting redeclaration is an error.
    """

    def __init__(
        self,
        service: str,
        *,
        node_id: int = 0,
        otlp_endpoint: str | None = None,
        clock: Timer = time.monotonic,
        logger: logging.Logger | None = None,
    ) -> None:
        self.service = service
        self.node_id = node_id
        self.clock = clock
        self._log = logger or logging.getLogger("rangekv.telemetry")
        attributes: dict[str, str | int] = {
            "service.name": f"rangekv-{service}",
            "service.namespace": "rangekv",
        }
        if node_id:
            attributes["service.instance.id"] = str(node_id)
        self.resource = Resource.create(attributes)
        self.registry = CollectorRegistry(auto_describe=True)
        self._histograms = HistogramCollector()
        self.registry.register(self._histograms)
        self._reader = PrometheusMetricReader(registry=self.registry, scope_info_enabled=False)
        self._meter_provider = MeterProvider(
            resource=self.resource, metric_readers=[self._reader], shutdown_on_exit=False
        )
        self.meter = self._meter_provider.get_meter(f"rangekv.{service}")
        self._tracer_provider, self.tracer = _make_tracer(self.resource, otlp_endpoint, self._log)
        #: Whether spans are recorded and exported; decided once, here.
        self.tracing = self._tracer_provider is not None
        #: The tracer for request-path code, or None when tracing is off: holders
        #: test it once per request and otherwise build nothing.
        self.active_tracer: trace.Tracer | None = self.tracer if self.tracing else None
        self._instruments: dict[str, Instrument] = {}
        self._http: tuple[WSGIServer, threading.Thread] | None = None
        self._monitor: EventLoopLagMonitor | None = None
        self._closed = False

    # --- instruments ---------------------------------------------------------------

    def _declare(self, kind: str, name: str, unit: str, labels: Sequence[str]) -> Instrument | None:
        label_tuple = tuple(labels)
        existing = self._instruments.get(name)
        if existing is not None:
            if existing.kind != kind or existing.labels != label_tuple:
                raise ValueError(
                    f"{name}: already declared as {existing.kind} with labels "
                    f"{list(existing.labels)}; cannot redeclare as {kind} with {list(label_tuple)}"
                )
            return existing
        if not _NAME.match(name):
            raise ValueError(f"{name!r}: metric names are rangekv_<snake_case>")
        if unit not in _UNIT_SUFFIX:
            raise ValueError(f"{name}: unit {unit!r} is not one of {sorted(_UNIT_SUFFIX)}")
        if not name.endswith(_UNIT_SUFFIX[unit]):
            raise ValueError(
                f"{name}: with unit {unit!r} the name must end in {_UNIT_SUFFIX[unit]}"
            )
        if kind == "counter" and name.endswith("_total"):
            raise ValueError(f"{name}: leave _total off; the Prometheus exporter adds it")
        for label in label_tuple:
            if not _LABEL.match(label) or label in _RESERVED_LABELS:
                raise ValueError(f"{name}: bad label name {label!r}")
        if len(set(label_tuple)) != len(label_tuple):
            raise ValueError(f"{name}: duplicate label in {list(label_tuple)}")
        return None

    def counter(
        self, name: str, description: str, *, unit: str = "", labels: Sequence[str] = ()
    ) -> Counter:
        existing = self._declare("counter", name, unit, labels)
        if existing is not None:
            return existing  # type: ignore[return-value]
        made = Counter(name, tuple(labels))
        self.meter.create_observable_counter(
            name, callbacks=[made.observe], unit=unit, description=description
        )
        self._instruments[name] = made
        return made

    def up_down_counter(
        self, name: str, description: str, *, unit: str = "", labels: Sequence[str] = ()
    ) -> UpDownCounter:
        existing = self._declare("up_down_counter", name, unit, labels)
        if existing is not None:
            return existing  # type: ignore[return-value]
        made = UpDownCounter(name, tuple(labels))
        self.meter.create_observable_up_down_counter(
            name, callbacks=[made.observe], unit=unit, description=description
        )
        self._instruments[name] = made
        return made

    def histogram(
        self,
        name: str,
        description: str,
        *,
        unit: str = "s",
        labels: Sequence[str] = (),
        buckets: Sequence[float] | None = None,
    ) -> Histogram:
        """A histogram; ``buckets`` default by unit (seconds, bytes, else OpenTelemetry's)."""
        existing = self._declare("histogram", name, unit, labels)
        if existing is not None:
            return existing  # type: ignore[return-value]
        if buckets is None:
            buckets = {"s": SECONDS_BUCKETS, "By": BYTES_BUCKETS}.get(unit)
        made = Histogram(
            name,
            description,
            tuple(labels),
            DEFAULT_BUCKETS if buckets is None else buckets,
            self.clock,
        )
        self._histograms.add(made)
        self._instruments[name] = made
        return made

    def observable_gauge(
        self,
        name: str,
        description: str,
        callback: Callable[[], GaugeReading],
        *,
        unit: str = "",
        labels: Sequence[str] = (),
    ) -> None:
        """A gauge read by calling ``callback`` at each scrape.

        The callback runs on the metrics endpoint's thread, not the event loop:
        it must only read (plain attribute reads are safe under the GIL) and
        must never block or await.
        """
        if self._declare("observable_gauge", name, unit, labels) is not None:
            raise ValueError(f"{name}: an observable gauge can only be declared once")
        declared = _Gauge(name, tuple(labels))

        def observe(_options: CallbackOptions) -> Iterable[Observation]:
            reading = callback()
            if not isinstance(reading, Mapping):
                return [Observation(float(reading), declared.attributes({}))]
            return [
                Observation(
                    float(value), declared.attributes(dict(zip(declared.labels, key, strict=True)))
                )
                for key, value in reading.items()
            ]

        self.meter.create_observable_gauge(
            name, callbacks=[observe], unit=unit, description=description
        )
        self._instruments[name] = declared

    # --- exposition ----------------------------------------------------------------

    def metrics_text(self) -> str:
        """The current Prometheus exposition, as the endpoint would serve it."""
        return generate_latest(self.registry).decode()

    def serve_metrics(self, port: int, host: str = "127.0.0.1") -> int:
        """Serve ``/metrics`` on ``host:port`` (0 picks a free port); returns the bound port.

        A private WSGI server rather than ``prometheus_client.start_http_server``
        so that stopping it is quick (short poll interval) and it serves this
        object's registry, not the global one.
        """
        if self._http is not None:
            raise RuntimeError("metrics endpoint already running")
        server_cls = type(
            "_MetricsServer",
            (_ThreadingWSGIServer,),
            {"address_family": socket.AF_INET6 if ":" in host else socket.AF_INET},
        )
        httpd: WSGIServer = make_server(
            host, port, make_wsgi_app(self.registry), server_cls, handler_class=_QuietHandler
        )
        thread = threading.Thread(
            target=httpd.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"rangekv-metrics-{self.service}",
            daemon=True,
        )
        thread.start()
        self._http = (httpd, thread)
        return int(httpd.server_port)

    def stop_metrics_server(self) -> None:
        """Stop the endpoint (blocks briefly; call via ``asyncio.to_thread`` from a loop)."""
        http, self._http = self._http, None
        if http is None:
            return
        httpd, thread = http
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)

    # --- event-loop lag ------------------------------------------------------------

    @property
    def event_loop_monitor(self) -> EventLoopLagMonitor | None:
        """The running lag monitor, if any (one per process is enough)."""
        return self._monitor if self._monitor is not None and self._monitor.running else None

    def start_event_loop_monitor(self, interval: float = 0.1) -> EventLoopLagMonitor:
        """Start recording ``rangekv_event_loop_lag_seconds`` on the running loop."""
        if self._monitor is not None and self._monitor.running:
            raise RuntimeError("event-loop lag monitor already running")
        histogram = self.histogram(
            EVENT_LOOP_LAG,
            "How late the event loop ran a callback scheduled every 100ms",
            unit="s",
        )
        self._monitor = EventLoopLagMonitor(histogram, interval=interval, clock=self.clock)
        self._monitor.start()
        return self._monitor

    # --- lifecycle -----------------------------------------------------------------

    def shutdown(self) -> None:
        """Stop the endpoint and monitor, flush traces, release providers. Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._monitor is not None:
            self._monitor.cancel()
        self.stop_metrics_server()
        self._meter_provider.shutdown()
        if self._tracer_provider is not None:
            self._tracer_provider.shutdown()


__all__ = [
    "BYTES_BUCKETS",
    "EVENT_LOOP_LAG",
    "SECONDS_BUCKETS",
    "BoundCounter",
    "BoundHistogram",
    "Counter",
    "EventLoopLagMonitor",
    "GaugeReading",
    "Histogram",
    "SpanSet",
    "Telemetry",
    "UpDownCounter",
    "context_from_traceparent",
    "end_span_with",
    "traceparent",
]
