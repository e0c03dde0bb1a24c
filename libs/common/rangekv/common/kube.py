"""What a rangekv process asks the Kubernetes API: how many pods its StatefulSet wants.

One question, behind one small interface (:class:`StatefulSets`), because a
raftnode needs exactly one fact from the API server, once, on SIGTERM: is my
ordinal still below my StatefulSet's ``spec.replicas``? If not, the pod is
being scaled away (not restarted) and must decommission before it exits. The
chart's RBAC grants exactly this call: ``get`` on this one StatefulSet.

- :class:`KubeStatefulSets` asks a real API server with the ``kubernetes``
  client. Where it connects: in a pod, the service-account token and CA the
  kubelet mounts (``KUBERNETES_SERVICE_HOST``); elsewhere, the standard
  kubeconfig (``KUBECONFIG``), which is how the tests point it at an emulated
  API server.
- :class:`FixedStatefulSets` is the in-process twin, for unit tests.

Outside a cluster (no pod name or namespace configured) the lifecycle is off
and nothing here is called.
"""

from __future__ import annotations

import asyncio
import json
import os
from dataclasses import dataclass, field
from typing import Any, Protocol

from rangekv.common.config import pod_ordinal


class KubeError(Exception):
    """The API server could not answer (unreachable, forbidden, not found)."""


class StatefulSets(Protocol):
    """Reads a StatefulSet's desired replica count."""

    async def replicas(self, namespace: str, name: str) -> int: ...


@dataclass
class FixedStatefulSets:
    """In-process twin: replica counts by (namespace, name); a missing one is a KubeError."""

    counts: dict[tuple[str, str], int] = field(default_factory=dict)
    calls: list[tuple[str, str]] = field(default_factory=list)

    async def replicas(self, namespace: str, name: str) -> int:
        self.calls.append((namespace, name))
        try:
            return self.counts[(namespace, name)]
        except KeyError:
            raise KubeError(f"statefulsets.apps {name!r} not found in {namespace!r}") from None


class KubeStatefulSets:
    """The real API server through the ``kubernetes`` client (GET one StatefulSet).

    The client is synchronous (urllib3): each call runs in a worker thread with
    a request timeout, so a slow API server never stalls the event loop.
    """

    def __init__(self, api_client: Any, *, timeout: float = 5.0) -> None:
        from kubernetes import client

        self._apps = client.AppsV1Api(api_client)
        self._timeout = timeout

    @staticmethod
    def connect(*, timeout: float = 5.0) -> KubeStatefulSets:
        """In a pod: the mounted service account; elsewhere: the kubeconfig."""
        from kubernetes import client, config

        configuration = client.Configuration()
        try:
            if os.environ.get("KUBERNETES_SERVICE_HOST"):
                config.load_incluster_config(client_configuration=configuration)
            else:
                # KUBECONFIG read now (the client reads it once, at import).
                config.load_kube_config(
                    config_file=os.environ.get("KUBECONFIG") or None,
                    client_configuration=configuration,
                )
        except (config.ConfigException, OSError, TypeError, ValueError, AttributeError) as exc:
            raise KubeError(f"no Kubernetes API configuration: {exc}") from None
        return KubeStatefulSets(client.ApiClient(configuration), timeout=timeout)

    async def replicas(self, namespace: str, name: str) -> int:
        from kubernetes.client.exceptions import ApiException

        def read() -> int:
            # The raw object, not the client's model: one field is all we need, and
            # it should not hinge on how strictly a client release validates the rest.
            resp = self._apps.read_namespaced_stateful_set(
                name, namespace, _request_timeout=self._timeout, _preload_content=False
            )
            obj = json.loads(resp.data)  # type: ignore[attr-defined]  # raw urllib3 response
            replicas = obj.get("spec", {}).get("replicas", 1)  # the API's default is 1
            if not isinstance(replicas, int) or replicas < 0:
                raise ValueError(f"spec.replicas is {replicas!r}")
            return replicas

        try:
            return await asyncio.to_thread(read)
        except ApiException as exc:
            raise KubeError(
                f"reading statefulset {namespace}/{name}: {exc.status} {exc.reason}"
            ) from None
        except Exception as exc:  # urllib3 / socket errors: the API server is not there
            raise KubeError(f"reading statefulset {namespace}/{name}: {exc}") from None


@dataclass(frozen=True)
class PodIdentity:
    """Who this process is in Kubernetes (from the downward API), if anywhere."""

    pod_name: str
    namespace: str

    @property
    def in_cluster(self) -> bool:
        return bool(self.pod_name and self.namespace and self.ordinal is not None)

    @property
    def ordinal(self) -> int | None:
        return pod_ordinal(self.pod_name) if self.pod_name else None

    @property
    def statefulset(self) -> str:
        """A StatefulSet names its pods ``<statefulset>-<ordinal>``."""
        return self.pod_name.rpartition("-")[0]


async def scaled_away(pod: PodIdentity, sets: StatefulSets) -> bool:
    """Whether the pod's ordinal is at or above its StatefulSet's desired replicas,
    i.e. this SIGTERM removes the pod for good rather than restarting it.
    Raises KubeError when the API server cannot say."""
    ordinal = pod.ordinal
    if not pod.in_cluster or ordinal is None:
        return False
    return ordinal >= await sets.replicas(pod.namespace, pod.statefulset)


__all__ = [
    "FixedStatefulSets",
    "KubeError",
    "KubeStatefulSets",
    "PodIdentity",
    "StatefulSets",
    "scaled_away",
]
