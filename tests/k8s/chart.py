"""The chart as Kubernetes would receive it: rendered by Helm's own engine.

`helm-python-sdk` binds Helm v4's Go SDK, so `render` runs the same template
engine, value coalescing and values.schema.json validation as `helm install`,
with no helm binary and no cluster. Objects are then read with PyYAML.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import helm_python as helm
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "helm" / "rangekv"
DOCKERFILE = REPO / "Dockerfile"
RELEASE = "rk"
NAMESPACE = "rangekv-test"
#: The Kubernetes version the rendered objects are validated against (pinned).
KUBE_VERSION = "1.35.0"

#: Value sets the tests render: the defaults and the variants that change objects.
VALUE_SETS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "tls-off": {"tls": {"enabled": False}},
    "five-raftnodes": {"raftnode": {"replicas": 5}},
    "network-policy": {"networkPolicy": {"enabled": True}},
    "network-policy-restricted": {
        "networkPolicy": {
            "enabled": True,
            "gatewayFrom": [{"namespaceSelector": {"matchLabels": {"team": "apps"}}}],
            "metricsFrom": [{"namespaceSelector": {"matchLabels": {"name": "monitoring"}}}],
        }
    },
    "service-monitor": {"metrics": {"serviceMonitor": {"enabled": True}}},
    "dashboards": {"dashboards": {"enabled": True}},
    "node-port": {"gateway": {"service": {"type": "NodePort", "nodePort": 30051}}},
    "load-balancer": {
        "gateway": {"service": {"type": "LoadBalancer", "loadBalancerSourceRanges": ["10.0.0.0/8"]}}
    },
    "everything-tuned": {
        "otlpEndpoint": "http://otel-collector.observability:4317",
        "logging": {"level": "DEBUG", "format": "text"},
        "raftnode": {
            "settings": {"fsm-sync-mode": "nosync", "tick-interval": 0.05, "gc-ttl": 300},
            "extraArgs": ["--event-loop", "asyncio"],
            "persistence": {"storageClass": "fast-ssd", "size": "50Gi"},
        },
        "metarange": {"settings": {"liveness-ttl": 5}},
        "gateway": {"settings": {"max-inflight-batches": 4}},
        "serviceAccount": {"annotations": {"example.com/role": "rangekv"}},
        "imagePullSecrets": [{"name": "registry"}],
    },
}


def merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """Deep merge (dicts merge, everything else is replaced), as Helm coalesces values."""
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


@dataclass(frozen=True)
class Rendered:
    files: dict[str, str]
    objects: tuple[dict[str, Any], ...]

    @property
    def notes(self) -> str:
        return self.files.get("rangekv/templates/NOTES.txt", "")

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [o for o in self.objects if o["kind"] == kind]

    def get(self, kind: str, name: str) -> dict[str, Any]:
        for o in self.objects:
            if o["kind"] == kind and o["metadata"]["name"] == name:
                return o
        raise KeyError(
            f"no {kind} {name} in {[(o['kind'], o['metadata']['name']) for o in self.objects]}"
        )

    def component(self, kind: str, component: str) -> dict[str, Any]:
        return self.get(kind, f"{RELEASE}-rangekv-{component}")


def render(
    values: dict[str, Any] | None = None, *, name: str = RELEASE, namespace: str = NAMESPACE
) -> Rendered:
    """Render the chart (raises helm_python.HelmValuesError for values the schema refuses)."""
    with helm.Chart.load(str(CHART)) as chart:
        files = chart.render(values or {}, name=name, namespace=namespace, is_install=True)
    objects = []
    for path, text in sorted(files.items()):
        if not path.endswith((".yaml", ".yml")):
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                objects.append(doc)
    return Rendered(files, tuple(objects))
