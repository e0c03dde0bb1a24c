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
which keeps cardinality what the declaration says.

Traces are exported with OTLP/gRPC when an endpoint is configured and the
optional ``opentelemetry-exporter-otlp-proto-grpc`` package is importable;
otherwise the tracer is a no-op, so instrumented code never needs to check.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from opentelemetry import trace
from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from prometheus_client import CollectorRegistry, generate_latest, make_wsgi_app

Clock = Callable[[], float]
LabelValue = str | int | bool

SECONDS_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
"""Default histogram boundaries for ``unit="s"``: sub-millisecond apply paths up to
multi-second stalls (OpenTelemetry's own defaults assume milliseconds)."""
BYTES_BUCKETS = tuple(float(64 * 4**i) for i in range(11))  # 64 B .. 64 MiB
"""Default histogram boundaries for ``unit="By"``."""

EVENT_LOOP_LAG = "rangekv_event_loop_lag_seconds"

_NAME = re.compile(r"^rangekv_[a-z][a-z0-9_]*[a-z0-9]$")
_LABEL = re.compile(r"^[a-z_][a-z0-9_]*$")
_UNIT_SUFFIX = {"": "", "1": "", "s": "_seconds", "By": "_bytes"}
_RESERVED_LABELS = frozenset({"amount", "value", "self"})


def _label_text(value: LabelValue) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


class _Instrument:
    """The part of every instrument wrapper that enforces the declared label set."""

    kind = "instrument"

    def __init__(self, name: str, labels: tuple[str, ...]) -> None:
        self.name = name
        self.labels = labels
        self._label_set = frozenset(labels)

    def attributes(self, values: Mapping[str, LabelValue]) -> dict[str, str]:
        """Validated OpenTelemetry attributes for one label assignment."""
        if values.keys() != self._label_set:
            raise ValueError(
                f"{self.name}: labels {sorted(values)} do not match the declared {list(self.labels)}"
            )
        return {key: _label_text(value) for key, value in values.items()}


class Counter(_Instrument):
    """A monotonic counter (Prometheus ``<name>_total``)."""

    kind = "counter"

    def __init__(self, name: str, labels: tuple[str, ...], otel: Any) -> None:
        super().__init__(name, labels)
        self._otel = otel

    def add(self, amount: float = 1, **labels: LabelValue) -> None:
        self._otel.add(amount, self.attributes(labels))

    def bind(self, **labels: LabelValue) -> BoundCounter:
        """Validate ``labels`` once, for a hot path that always uses the same ones."""
        return BoundCounter(self._otel, self.attributes(labels))


class BoundCounter:
    def __init__(self, otel: Any, attributes: dict[str, str]) -> None:
        self._otel = otel
        self._attributes = attributes

    def add(self, amount: float = 1) -> None:
        self._otel.add(amount, self._attributes)


class UpDownCounter(Counter):
    """A counter that may go down (a Prometheus gauge), e.g. in-flight requests."""

    kind = "up_down_counter"


class Histogram(_Instrument):
    """A distribution of values (Prometheus ``_bucket``/``_sum``/``_count``)."""

    kind = "histogram"

    def __init__(self, name: str, labels: tuple[str, ...], otel: Any, clock: Clock) -> None:
        super().__init__(name, labels)
        self._otel = otel
        self._clock = clock

    def record(self, value: float, **labels: LabelValue) -> None:
        self._otel.record(value, self.attributes(labels))

    def bind(self, **labels: LabelValue) -> BoundHistogram:
        return BoundHistogram(self._otel, self.attributes(labels), self._clock)

    def time(self, **labels: LabelValue) -> contextlib.AbstractContextManager[None]:
        """Record how long the ``with`` block took, by the telemetry clock."""
        return self.bind(**labels).time()


class BoundHistogram:
    def __init__(self, otel: Any, attributes: dict[str, str], clock: Clock) -> None:
        self._otel = otel
        self._attributes = attributes
        self._clock = clock

    def record(self, value: float) -> None:
        self._otel.record(value, self._attributes)

    @contextlib.contextmanager
    def time(self) -> Iterator[None]:
        start = self._clock()
        try:
            yield
        finally:
            self._otel.record(self._clock() - start, self._attributes)


class _Gauge(_Instrument):
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
        self, histogram: Histogram, *, interval: float = 0.1, clock: Clock = time.monotonic
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
        if task is None:
            return
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


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
        clock: Clock = time.monotonic,
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
        self._reader = PrometheusMetricReader(registry=self.registry, scope_info_enabled=False)
        self._meter_provider = MeterProvider(
            resource=self.resource, metric_readers=[self._reader], shutdown_on_exit=False
        )
        self.meter = self._meter_provider.get_meter(f"rangekv.{service}")
        self._tracer_provider, self.tracer = _make_tracer(self.resource, otlp_endpoint, self._log)
        self._instruments: dict[str, _Instrument] = {}
        self._http: tuple[WSGIServer, threading.Thread] | None = None
        self._monitor: EventLoopLagMonitor | None = None
        self._closed = False

    # --- instruments ---------------------------------------------------------------

    def _declare(
        self, kind: str, name: str, unit: str, labels: Sequence[str]
    ) -> _Instrument | None:
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
        otel = self.meter.create_counter(name, unit=unit, description=description)
        made = Counter(name, tuple(labels), otel)
        self._instruments[name] = made
        return made

    def up_down_counter(
        self, name: str, description: str, *, unit: str = "", labels: Sequence[str] = ()
    ) -> UpDownCounter:
        existing = self._declare("up_down_counter", name, unit, labels)
        if existing is not None:
            return existing  # type: ignore[return-value]
        otel = self.meter.create_up_down_counter(name, unit=unit, description=description)
        made = UpDownCounter(name, tuple(labels), otel)
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
        otel = self.meter.create_histogram(
            name,
            unit=unit,
            description=description,
            explicit_bucket_boundaries_advisory=list(buckets) if buckets is not None else None,
        )
        made = Histogram(name, tuple(labels), otel, self.clock)
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
    "Telemetry",
    "UpDownCounter",
]
