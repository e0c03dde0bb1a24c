"""Metric instruments whose recording costs a dict update; export happens at scrape.

Why not OpenTelemetry's synchronous instruments on the request path: measured
on this machine (`benchmarks/metrics_cost.py`), the SDK's ``Counter.add``
costs about 10 us and ``Histogram.record`` about 14 us per call (view
matching, attribute hashing, locks, exemplar filters), and a put passes
through a dozen records across the gateway and three raftnodes, which comes
to several percent of the CPU the whole cluster spends on a put. Here a
record is a lock, a dict lookup and an addition (about 1 us), and the cost of
turning totals into an exposition is paid once per scrape instead.

How each kind reaches the Prometheus endpoint (names and series unchanged):
* counters and up-down counters: OpenTelemetry asynchronous instruments
  (``create_observable_counter`` / ``create_observable_up_down_counter``)
  whose callbacks report the cumulative totals kept here;
* histograms: OpenTelemetry's Python API has no asynchronous histogram, so
  :class:`HistogramCollector` exports them from the same private
  ``CollectorRegistry`` (``<name>_bucket{le}``, ``<name>_sum``, ``<name>_count``),
  with the bucket rule Prometheus uses (a value lands in the first bucket
  whose bound is >= the value).

Recording may happen on any thread (the event loop, a worker, the metrics
thread never records); each instrument's lock makes a scrape see whole
records, never a count without its sum.

Every instrument enforces its declared label set: recording with other labels
is a ``ValueError`` rather than a silently new series.
"""

from __future__ import annotations

import bisect
import contextlib
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

from opentelemetry.metrics import CallbackOptions, Observation
from prometheus_client.core import HistogramMetricFamily
from prometheus_client.registry import Collector

LabelValue = str | int | bool
#: A monotonic reading in seconds, for timing what a histogram records.
Timer = Callable[[], float]
LabelKey = tuple[str, ...]


def _label_text(value: LabelValue) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


class Instrument:
    """The part of every instrument that enforces the declared label set."""

    kind = "instrument"

    def __init__(self, name: str, labels: tuple[str, ...]) -> None:
        self.name = name
        self.labels = labels
        self._label_set = frozenset(labels)

    def key(self, values: Mapping[str, LabelValue]) -> LabelKey:
        """The label values in declared order, after checking the label set."""
        if values.keys() != self._label_set:
            raise ValueError(
                f"{self.name}: labels {sorted(values)} do not match the declared {list(self.labels)}"
            )
        return tuple(_label_text(values[label]) for label in self.labels)

    def attributes(self, values: Mapping[str, LabelValue]) -> dict[str, str]:
        """Validated OpenTelemetry attributes for one label assignment."""
        return dict(zip(self.labels, self.key(values), strict=True))


class Counter(Instrument):
    """A monotonic counter (Prometheus ``<name>_total``)."""

    kind = "counter"

    def __init__(self, name: str, labels: tuple[str, ...]) -> None:
        super().__init__(name, labels)
        self._lock = threading.Lock()
        self._totals: dict[LabelKey, float] = {}

    def add(self, amount: float = 1, **labels: LabelValue) -> None:
        self._add(self.key(labels), amount)

    def _add(self, key: LabelKey, amount: float) -> None:
        with self._lock:
            self._totals[key] = self._totals.get(key, 0.0) + amount

    def bind(self, **labels: LabelValue) -> BoundCounter:
        """Validate ``labels`` once, for a hot path that always uses the same ones."""
        return BoundCounter(self, self.key(labels))

    def observe(self, _options: CallbackOptions | None = None) -> Iterable[Observation]:
        """The cumulative totals, as an OpenTelemetry asynchronous-instrument callback."""
        with self._lock:
            totals = list(self._totals.items())
        return [
            Observation(value, dict(zip(self.labels, key, strict=True))) for key, value in totals
        ]


class BoundCounter:
    __slots__ = ("_counter", "_key")

    def __init__(self, counter: Counter, key: LabelKey) -> None:
        self._counter = counter
        self._key = key

    def add(self, amount: float = 1) -> None:
        self._counter._add(self._key, amount)


class UpDownCounter(Counter):
    """A counter that may go down (a Prometheus gauge), e.g. in-flight requests."""

    kind = "up_down_counter"


class _Series:
    """One label assignment's histogram state: per-bucket counts and the sum."""

    __slots__ = ("counts", "total")

    def __init__(self, buckets: int) -> None:
        self.counts = [0] * (buckets + 1)  # the last one is +Inf
        self.total = 0.0


class Histogram(Instrument):
    """A distribution of values (Prometheus ``_bucket``/``_sum``/``_count``)."""

    kind = "histogram"

    def __init__(
        self,
        name: str,
        description: str,
        labels: tuple[str, ...],
        buckets: Sequence[float],
        clock: Timer,
    ) -> None:
        super().__init__(name, labels)
        bounds = [float(b) for b in buckets]
        if bounds != sorted(set(bounds)):
            raise ValueError(f"{name}: bucket bounds must be strictly increasing, got {bounds}")
        self.description = description
        self.bounds = bounds
        self._clock = clock
        self._lock = threading.Lock()
        self._series: dict[LabelKey, _Series] = {}

    def record(self, value: float, **labels: LabelValue) -> None:
        self._record(self.key(labels), value)

    def _record(self, key: LabelKey, value: float) -> None:
        index = bisect.bisect_left(self.bounds, value)
        with self._lock:
            series = self._series.get(key)
            if series is None:
                series = self._series[key] = _Series(len(self.bounds))
            series.counts[index] += 1
            series.total += value

    def bind(self, **labels: LabelValue) -> BoundHistogram:
        return BoundHistogram(self, self.key(labels), self._clock)

    def time(self, **labels: LabelValue) -> contextlib.AbstractContextManager[None]:
        """Record how long the ``with`` block took, by the telemetry clock."""
        return self.bind(**labels).time()

    def family(self) -> HistogramMetricFamily:
        """This histogram as a Prometheus metric family (cumulative buckets)."""
        family = HistogramMetricFamily(self.name, self.description, labels=list(self.labels))
        with self._lock:
            snapshot = [(key, list(s.counts), s.total) for key, s in self._series.items()]
        for key, counts, total in snapshot:
            cumulative, running = [], 0
            for bound, count in zip([*self.bounds, float("inf")], counts, strict=True):
                running += count
                cumulative.append((_bound_text(bound), float(running)))
            family.add_metric(list(key), cumulative, total)
        return family


def _bound_text(bound: float) -> str:
    if bound == float("inf"):
        return "+Inf"
    return repr(float(bound))


class BoundHistogram:
    __slots__ = ("_clock", "_histogram", "_key")

    def __init__(self, histogram: Histogram, key: LabelKey, clock: Timer) -> None:
        self._histogram = histogram
        self._key = key
        self._clock = clock

    def record(self, value: float) -> None:
        self._histogram._record(self._key, value)

    @contextlib.contextmanager
    def time(self) -> Iterator[None]:
        start = self._clock()
        try:
            yield
        finally:
            self._histogram._record(self._key, self._clock() - start)


class HistogramCollector(Collector):
    """Exports a Telemetry's histograms from its private Prometheus registry."""

    def __init__(self) -> None:
        self._histograms: list[Histogram] = []

    def add(self, histogram: Histogram) -> None:
        self._histograms.append(histogram)

    def collect(self) -> Iterator[HistogramMetricFamily]:
        for histogram in list(self._histograms):
            yield histogram.family()

    def describe(self) -> Iterator[Any]:
        """Nothing up front: histograms are declared while the process runs."""
        return iter(())


__all__ = [
    "BoundCounter",
    "BoundHistogram",
    "Counter",
    "Histogram",
    "HistogramCollector",
    "Instrument",
    "LabelValue",
    "Timer",
    "UpDownCounter",
]
