"""A process's Prometheus text exposition, fetched and read back.

Tests and benchmarks judge what a process did by its counters
(redirects, lease reads, refusals); this is the one parser they share.
"""

from __future__ import annotations

import asyncio
import re
import urllib.request
from collections import Counter
from collections.abc import Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from testkit.cluster import Cluster

__all__ = ["fetch_metrics", "gateway_counters", "metric_samples", "metric_value"]

_SAMPLE = re.compile(r"^(?P<name>[a-zA-Z_:][\w:]*)(?:\{(?P<labels>[^}]*)\})?\s+(?P<value>\S+)")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def fetch_metrics(address: str, timeout: float = 5.0) -> str:
    """The text exposition at `address` (HOST:PORT from a ready line, or a URL)."""
    url = address if address.startswith("http") else f"http://{address}/metrics"
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return str(resp.read().decode())


def metric_samples(text: str, name: str) -> list[tuple[dict[str, str], float]]:
    """Every sample named `name`, with its labels."""
    out = []
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        m = _SAMPLE.match(line)
        if m is not None and m.group("name") == name:
            out.append((dict(_LABEL.findall(m.group("labels") or "")), float(m.group("value"))))
    return out


def metric_value(text: str, name: str, **labels: str) -> float:
    """Sum of the samples named `name` whose labels include `labels` (0 if none)."""
    return sum(
        value
        for have, value in metric_samples(text, name)
        if all(have.get(k) == v for k, v in labels.items())
    )


async def gateway_counters(
    cluster: Cluster,
    sums: Mapping[str, str] | None = None,
    by_label: Mapping[tuple[str, str], str] | None = None,
) -> Counter[str]:
    """Counters summed over the cluster's gateways: `sums` maps a metric name to the
    key of the sum of all its samples; `by_label` maps (metric, label) to a prefix,
    one key `prefix:value` per value of that label (`prefix:all` where it is absent)."""
    out: Counter[str] = Counter()
    for gateway in cluster.gateways:
        text = await asyncio.to_thread(fetch_metrics, gateway.metrics)
        for name, key in (sums or {}).items():
            out[key] += int(sum(v for _, v in metric_samples(text, name)))
        for (name, label), prefix in (by_label or {}).items():
            for labels, value in metric_samples(text, name):
                out[f"{prefix}:{labels.get(label, 'all')}"] += int(value)
    return out
