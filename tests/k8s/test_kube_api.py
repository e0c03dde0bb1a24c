"""The Kubernetes API side of the lifecycle, against an emulated API server.

`kmock`'s KubernetesEmulator is an in-memory API server the real `kubernetes`
client talks HTTP to. It holds the raftnode StatefulSet exactly as the chart
renders it; `KubeStatefulSets` (the real client, configured from a kubeconfig
as outside a cluster) reads its spec.replicas, and the scale-down decision
follows it. Every request the emulator saw must be allowed by the rendered
Role: `get` on that one StatefulSet, nothing else.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import kmock
import pytest
from chart import NAMESPACE, RELEASE, render

from rangekv.common.kube import KubeError, KubeStatefulSets, PodIdentity, scaled_away

STS = f"{RELEASE}-rangekv-raftnode"


def kubeconfig(path: Path, server: str) -> Path:
    path.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "emulated", "cluster": {"server": server}}],
                "users": [{"name": "raftnode", "user": {"token": "service-account-token"}}],
                "contexts": [
                    {"name": "emulated", "context": {"cluster": "emulated", "user": "raftnode"}}
                ],
                "current-context": "emulated",
            }
        )
    )
    return path


def allowed(rules: list[dict[str, Any]], method: str, path: str) -> bool:
    """Whether an RBAC Role's rules allow this request (namespaced, named resources)."""
    verb = {"GET": "get", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}.get(method)
    parts = path.strip("/").split("/")
    # /apis/GROUP/VERSION/namespaces/NS/RESOURCE/NAME
    if len(parts) != 7 or parts[0] != "apis" or parts[3] != "namespaces":
        return False
    group, namespace, resource, name = parts[1], parts[4], parts[5], parts[6]
    if namespace != NAMESPACE:
        return False
    return any(
        group in r["apiGroups"]
        and resource in r["resources"]
        and verb in r["verbs"]
        and name in r.get("resourceNames", [name])
        for r in rules
    )


async def test_scale_down_decision_through_the_real_client(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rendered = render({"raftnode": {"replicas": 5}})
    sts = rendered.component("StatefulSet", "raftnode")
    (role,) = rendered.of_kind("Role")

    async with kmock.KubernetesEmulator() as api, kmock.Server(api) as server:
        api.resources["apps/v1/statefulsets"] = {}
        api.objects["apps/v1/statefulsets", NAMESPACE, STS] = sts
        monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
        monkeypatch.setenv(
            "KUBECONFIG", str(kubeconfig(tmp_path / "kubeconfig", str(server.url).rstrip("/")))
        )
        sets = KubeStatefulSets.connect(timeout=5)
        pod3, pod4 = PodIdentity(f"{STS}-3", NAMESPACE), PodIdentity(f"{STS}-4", NAMESPACE)
        assert await sets.replicas(NAMESPACE, STS) == 5
        assert not await scaled_away(pod3, sets) and not await scaled_away(pod4, sets)
        # kubectl scale --replicas 3
        api.objects["apps/v1/statefulsets", NAMESPACE, STS] = {
            **sts,
            "spec": {**sts["spec"], "replicas": 3},
        }
        assert await scaled_away(pod3, sets) and await scaled_away(pod4, sets)
        assert not await scaled_away(PodIdentity(f"{STS}-2", NAMESPACE), sets)
        # Outside a StatefulSet nothing is asked.
        assert not await scaled_away(PodIdentity("", ""), sets)
        with pytest.raises(KubeError, match="404"):
            await sets.replicas(NAMESPACE, "someone-elses")
        requests = [(str(r.method).rsplit(".", 1)[-1].upper(), r.url.path) for r in api]

    assert len(requests) == 7
    assert all(method == "GET" for method, _ in requests)
    ours = [r for r in requests if r[1].endswith(f"/{STS}")]
    assert len(ours) == 6 and all(allowed(role["rules"], m, p) for m, p in ours)
    # The one request for another object is exactly what the Role would refuse.
    (other,) = [r for r in requests if not r[1].endswith(f"/{STS}")]
    assert not allowed(role["rules"], *other)


async def test_an_unreachable_api_server_is_a_kube_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig(tmp_path / "kc", "http://127.0.0.1:9")))
    sets = KubeStatefulSets.connect(timeout=2)
    with pytest.raises(KubeError, match="reading statefulset"):
        await sets.replicas(NAMESPACE, STS)
    (tmp_path / "garbage").write_text("clusters: 7\n")
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "garbage"))
    with pytest.raises(KubeError, match="no Kubernetes API configuration"):
        KubeStatefulSets.connect()
