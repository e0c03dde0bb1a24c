"""A rendered chart's pods, run as local processes the way Kubernetes would run them.

There is no API server or container runtime on these machines, so this module
plays the parts a cluster plays, from the rendered objects alone:

- **StatefulSet controller**: pods ``<set>-<ordinal>``, all at once (Parallel),
  scale up and down (highest ordinals first, each terminated with SIGTERM and
  its terminationGracePeriodSeconds), rolling restarts one pod at a time from
  the highest ordinal, each waiting for the previous to be Ready, and the
  PersistentVolumeClaim retention policy when scaled down.
- **Deployment controller**: ``replicas`` pods of the gateway.
- **kubelet**: each container's ``command`` (else the image's ENTRYPOINT, read
  from the Dockerfile, whose ``tini --`` only forwards signals and is dropped
  here) and ``args``, its ``env`` with ``$(VAR)`` expansion and the downward
  API (``metadata.name``, ``metadata.namespace``, ``metadata.uid``,
  ``status.podIP``), volume mounts (a PVC per pod that outlives restarts,
  emptyDirs that do not, secrets), and the startup / readiness / liveness
  probes exactly as specified (gRPC health checks to podIP:port with the
  probe's service name, periods, timeouts, thresholds; a failed liveness probe
  restarts the container).
- **Pod network and DNS**: every pod gets its own loopback address
  (127.X.Y.N, X and Y random per cluster), kept across restarts. A pod's own
  network namespace is emulated by binding a wildcard listen address
  (0.0.0.0) to the pod's address. Cluster DNS is a hosts file the processes
  read through ``RANGEKV_HOSTS_FILE`` (``rangekv.common.dialing``): every
  existing pod under its headless Service name (ready or not, as
  publishNotReadyAddresses says) and each ClusterIP Service under its name,
  pointing at a ready endpoint.
- **API server**: the chart's raftnode StatefulSet lives in a kmock
  KubernetesEmulator; pods that mount a service account token reach it
  through ``KUBECONFIG`` (in a cluster: the in-cluster service account), and
  scaling updates its ``spec.replicas`` first, as ``kubectl scale`` does.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import re
import shutil
import signal
import sys
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from chart import NAMESPACE, Rendered
from grpc_health.v1 import health_pb2, health_pb2_grpc
from test_dockerfile import entrypoint

from rangekv.common.dialing import HOSTS_FILE_ENV

CLUSTER_DOMAIN = "cluster.local"
_VAR = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)")


def image_entrypoint() -> list[str]:
    """The Dockerfile's ENTRYPOINT without its PID-1 signal forwarder."""
    words = entrypoint()
    if words[:2] == ["/usr/bin/tini", "--"]:
        words = words[2:]
    return words


def expand(text: str, env: dict[str, str]) -> str:
    """Kubernetes' dependent variables: $(VAR) of a variable defined earlier."""
    return _VAR.sub(lambda m: env.get(m.group(1), m.group(0)), text)


@dataclass
class ProbeStats:
    checks: int = 0
    failures: int = 0


class Pod:
    """One pod: its container process, its probes, its volumes, its address."""

    def __init__(
        self,
        cluster: Cluster,
        name: str,
        template: dict[str, Any],
        ip: str,
        *,
        ordinal: int | None = None,
        claim_dirs: dict[str, Path] | None = None,
    ) -> None:
        self.cluster = cluster
        self.name = name
        self.template = template
        self.spec: dict[str, Any] = template["spec"]
        self.container: dict[str, Any] = self.spec["containers"][0]
        self.ip = ip
        self.ordinal = ordinal
        self.claim_dirs = claim_dirs or {}
        self.uid = str(uuid.uuid4())
        self.proc: asyncio.subprocess.Process | None = None
        self.started = False
        self.ready = False
        self.ready_event = asyncio.Event()
        self.restarts = 0
        self.exit_codes: list[int] = []
        self.probe_stats: dict[str, ProbeStats] = {}
        self.log_path = cluster.base / "logs" / f"{name}.log"
        self._probes: asyncio.Task[None] | None = None
        self._terminating = False

    # --- what the kubelet computes -------------------------------------------------------

    def _field(self, path: str) -> str:
        fields = {
            "metadata.name": self.name,
            "metadata.namespace": NAMESPACE,
            "metadata.uid": self.uid,
            "status.podIP": self.ip,
            "spec.serviceAccountName": self.spec.get("serviceAccountName", "default"),
            "spec.nodeName": "harness",
        }
        if path not in fields:
            raise ValueError(f"{self.name}: downward API field {path!r} not emulated")
        return fields[path]

    def _mounts(self) -> list[tuple[str, Path]]:
        """(mountPath, host folder) of every volume mount, longest path first."""
        volumes = {v["name"]: v for v in self.spec.get("volumes", [])}
        out = []
        for m in self.container.get("volumeMounts", []):
            name = m["name"]
            if name in self.claim_dirs:
                host = self.claim_dirs[name]
            elif "secret" in volumes.get(name, {}):
                host = self.cluster.secret_dir(volumes[name]["secret"]["secretName"])
            else:  # emptyDir: fresh for every start of the container
                host = self.cluster.base / "empty" / self.name / f"{name}-{self.restarts}"
            host.mkdir(parents=True, exist_ok=True)
            out.append((m["mountPath"], host))
        return sorted(out, key=lambda mh: -len(mh[0]))

    def _localize(self, value: str) -> str:
        """Container paths to their host folders; a wildcard bind to the pod's address."""
        if value == "0.0.0.0":
            return self.ip
        for mount_path, host in self._mounts():
            if value == mount_path or value.startswith(mount_path + "/"):
                return str(host) + value[len(mount_path) :]
        return value

    def environment(self) -> dict[str, str]:
        env: dict[str, str] = {}
        for item in self.container.get("env", []):
            if "value" in item:
                value = expand(str(item["value"]), env)
            else:
                value = self._field(item["valueFrom"]["fieldRef"]["fieldPath"])
            env[item["name"]] = self._localize(value)
        return env

    def argv(self, env: dict[str, str]) -> list[str]:
        command = self.container.get("command") or image_entrypoint()
        args = self.container.get("args", [])
        return [self._localize(expand(str(a), env)) for a in [*command, *args]]

    def process_env(self) -> dict[str, str]:
        env = {
            "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '/usr/bin:/bin')}",
            "HOME": str(self.cluster.base / "home"),
            "LANG": "C.UTF-8",
            HOSTS_FILE_ENV: str(self.cluster.hosts_path),
            "PYTHONDONTWRITEBYTECODE": "1",
        }
        if self.spec.get("automountServiceAccountToken") and self.cluster.kubeconfig:
            env["KUBECONFIG"] = str(self.cluster.kubeconfig)
        env.update(self.environment())
        return env

    # --- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        self.started = self.ready = False
        self.ready_event.clear()
        self._terminating = False
        env = self.process_env()
        argv = self.argv(env)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            log.write(f"=== start {' '.join(argv)}\n".encode())
            log.flush()
            self.proc = await asyncio.create_subprocess_exec(
                *argv,
                stdout=log,
                stderr=log,
                env=env,
                start_new_session=True,
            )
        self.cluster.publish_dns()
        self._probes = asyncio.ensure_future(self._probe_loop(self.proc))

    async def terminate(self) -> int:
        """SIGTERM, then SIGKILL after terminationGracePeriodSeconds (kubelet)."""
        self._terminating = True
        self._set_ready(False)
        proc = self.proc
        if self._probes is not None:
            self._probes.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._probes
        if proc is None or proc.returncode is not None:
            return proc.returncode if proc and proc.returncode is not None else 0
        grace = float(self.spec.get("terminationGracePeriodSeconds", 30))
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            code = await asyncio.wait_for(proc.wait(), grace)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            code = await proc.wait()
        self.exit_codes.append(code)
        return code

    def kill(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)

    def _set_ready(self, ready: bool) -> None:
        if ready != self.ready:
            self.ready = ready
            if ready:
                self.ready_event.set()
            else:
                self.ready_event.clear()
            self.cluster.publish_dns()
            self.cluster.note_readiness()

    async def wait_ready(self, timeout: float) -> None:
        try:
            await asyncio.wait_for(self.ready_event.wait(), timeout)
        except TimeoutError:
            raise TimeoutError(
                f"pod {self.name} not ready within {timeout:.0f}s; see {self.log_path}"
            ) from None

    # --- probes (kubelet) ---------------------------------------------------------------

    async def _check(self, probe: dict[str, Any]) -> bool:
        grpc_probe = probe["grpc"]
        port = grpc_probe["port"]
        timeout = float(probe.get("timeoutSeconds", 1))
        try:
            async with grpc.aio.insecure_channel(f"{self.ip}:{port}") as channel:
                reply = await health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(service=grpc_probe.get("service", "")),
                    timeout=timeout,
                )
        except grpc.aio.AioRpcError:
            return False
        return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)

    async def _run_probe(self, kind: str, probe: dict[str, Any]) -> bool:
        ok = await self._check(probe)
        stats = self.probe_stats.setdefault(kind, ProbeStats())
        stats.checks += 1
        stats.failures += 0 if ok else 1
        return ok

    async def _probe_loop(self, proc: asyncio.subprocess.Process) -> None:
        c = self.container
        startup = c.get("startupProbe")
        if startup is not None:
            failures = 0
            while True:
                # The probe's own period (kubelet); not a synchronisation sleep.
                await asyncio.sleep(float(startup.get("periodSeconds", 10)))
                if proc.returncode is not None:
                    return
                if await self._run_probe("startup", startup):
                    break
                failures += 1
                if failures >= int(startup.get("failureThreshold", 3)):
                    await self._restart("startup probe failed")
                    return
        self.started = True
        await asyncio.gather(
            self._readiness(proc, c.get("readinessProbe")),
            self._liveness(proc, c.get("livenessProbe")),
        )

    async def _readiness(
        self, proc: asyncio.subprocess.Process, probe: dict[str, Any] | None
    ) -> None:
        if probe is None:
            self._set_ready(True)
            return
        successes = failures = 0
        while proc.returncode is None:
            if await self._run_probe("readiness", probe):
                successes, failures = successes + 1, 0
                if successes >= int(probe.get("successThreshold", 1)):
                    self._set_ready(True)
            else:
                successes, failures = 0, failures + 1
                if failures >= int(probe.get("failureThreshold", 3)):
                    self._set_ready(False)
            await asyncio.sleep(float(probe.get("periodSeconds", 10)))  # the probe's period
        self._set_ready(False)

    async def _liveness(
        self, proc: asyncio.subprocess.Process, probe: dict[str, Any] | None
    ) -> None:
        if probe is None:
            return
        failures = 0
        while proc.returncode is None:
            await asyncio.sleep(float(probe.get("periodSeconds", 10)))  # the probe's period
            if proc.returncode is not None or self._terminating:
                return
            if await self._run_probe("liveness", probe):
                failures = 0
                continue
            failures += 1
            if failures >= int(probe.get("failureThreshold", 3)):
                await self._restart("liveness probe failed")
                return

    async def _restart(self, why: str) -> None:
        self.cluster.say(f"kubelet: restarting {self.name}: {why}")
        self.restarts += 1
        self._set_ready(False)
        self.kill()
        if self.proc is not None:
            await self.proc.wait()
        await self.start()


class StatefulSet:
    """The StatefulSet controller for one rendered StatefulSet."""

    def __init__(self, cluster: Cluster, obj: dict[str, Any]) -> None:
        self.cluster = cluster
        self.obj = obj
        self.name: str = obj["metadata"]["name"]
        self.pods: dict[int, Pod] = {}

    @property
    def replicas(self) -> int:
        return int(self.obj["spec"]["replicas"])

    def _pod(self, ordinal: int) -> Pod:
        name = f"{self.name}-{ordinal}"
        claims = {
            c["metadata"]["name"]: self.cluster.base / "pvc" / f"{c['metadata']['name']}-{name}"
            for c in self.obj["spec"].get("volumeClaimTemplates", [])
        }
        return Pod(
            self.cluster,
            name,
            self.obj["spec"]["template"],
            self.cluster.ip_for(name),
            ordinal=ordinal,
            claim_dirs=claims,
        )

    async def create(self) -> None:
        await self._start(range(self.replicas))

    async def _start(self, ordinals: range) -> None:
        assert self.obj["spec"].get("podManagementPolicy") == "Parallel"
        new = [self._pod(i) for i in ordinals]
        for pod in new:
            self.pods[pod.ordinal or 0] = pod
        await asyncio.gather(*(p.start() for p in new))

    async def wait_ready(self, timeout: float) -> None:
        await asyncio.gather(*(p.wait_ready(timeout) for p in self.pods.values()))

    async def scale(self, replicas: int) -> dict[str, int]:
        """Like `kubectl scale`: the API object first, then the pods; returns the exit
        codes of the pods removed."""
        before = self.replicas
        self.obj["spec"]["replicas"] = replicas
        self.cluster.api_update(self.obj)
        if replicas > before:
            await self._start(range(before, replicas))
            return {}
        leaving = [self.pods[i] for i in range(replicas, before)]
        codes = await asyncio.gather(*(p.terminate() for p in leaving))
        policy = self.obj["spec"].get("persistentVolumeClaimRetentionPolicy", {})
        for pod in leaving:
            del self.pods[pod.ordinal or 0]
            if policy.get("whenScaled") == "Delete":
                for folder in pod.claim_dirs.values():
                    shutil.rmtree(folder, ignore_errors=True)
        self.cluster.publish_dns()
        return {p.name: c for p, c in zip(leaving, codes, strict=True)}

    async def rolling_restart(self, ready_timeout: float = 120.0) -> list[int]:
        """RollingUpdate: from the highest ordinal down, one pod at a time, each
        replaced only when every pod of the set is Ready (and the PDB allows it)."""
        codes = []
        for ordinal in sorted(self.pods, reverse=True):
            await self.wait_ready(ready_timeout)
            self.cluster.check_disruption_allowed(self.obj)
            pod = self.pods[ordinal]
            codes.append(await pod.terminate())
            pod.restarts += 1
            await pod.start()
            await pod.wait_ready(ready_timeout)
        return codes


class Cluster:
    """Every workload of a rendered release, run locally (module doc)."""

    def __init__(
        self,
        rendered: Rendered,
        base: Path,
        *,
        rng: random.Random,
        kubeconfig: Path | None = None,
        api_update: Callable[[dict[str, Any]], None] | None = None,
        say: Callable[[str], None] = print,
    ) -> None:
        self.rendered = rendered
        self.base = base
        self.say = say
        self.kubeconfig = kubeconfig
        self._api_update = api_update
        self.hosts_path = base / "hosts"
        self._net = f"127.{rng.randrange(16, 250)}.{rng.randrange(1, 250)}"
        self._ips: dict[str, str] = {}
        self.statefulsets = {
            o["metadata"]["name"]: StatefulSet(self, o) for o in rendered.of_kind("StatefulSet")
        }
        self.deployment_pods: dict[str, list[Pod]] = {}
        self.max_unavailable_seen: dict[str, int] = {}
        (base / "home").mkdir(parents=True, exist_ok=True)
        self.publish_dns()

    # --- network -----------------------------------------------------------------------

    def ip_for(self, pod_name: str) -> str:
        if pod_name not in self._ips:
            self._ips[pod_name] = f"{self._net}.{len(self._ips) + 2}"
        return self._ips[pod_name]

    def pods(self) -> list[Pod]:
        out = [p for s in self.statefulsets.values() for p in s.pods.values()]
        return out + [p for pods in self.deployment_pods.values() for p in pods]

    def publish_dns(self) -> None:
        """Rewrite the hosts file: pods under their headless Services, Services at a
        ready endpoint (written whole and renamed into place)."""
        lines = []
        for sts in self.statefulsets.values():
            service = sts.obj["spec"]["serviceName"]
            for pod in sts.pods.values():
                lines.append(f"{pod.ip} {pod.name}.{service}.{NAMESPACE}.svc.{CLUSTER_DOMAIN}")
        for svc in self.rendered.of_kind("Service"):
            if svc["spec"].get("clusterIP") == "None":
                continue
            selector = svc["spec"]["selector"]
            ready = [p for p in self.pods() if p.ready and self._selects(selector, p)]
            if ready:
                name = svc["metadata"]["name"]
                lines.append(f"{ready[0].ip} {name}.{NAMESPACE}.svc.{CLUSTER_DOMAIN} {name}")
        tmp = self.hosts_path.with_suffix(".tmp")
        tmp.write_text("\n".join(lines) + "\n")
        os.replace(tmp, self.hosts_path)

    @staticmethod
    def _selects(selector: dict[str, str], pod: Pod) -> bool:
        labels = pod.template["metadata"]["labels"]
        return all(labels.get(k) == v for k, v in selector.items())

    def secret_dir(self, name: str) -> Path:
        return self.base / "secrets" / name

    # --- the API server ------------------------------------------------------------------

    def api_update(self, obj: dict[str, Any]) -> None:
        if self._api_update is not None:
            self._api_update(obj)

    # --- disruption budgets -------------------------------------------------------------

    def _budget_for(self, obj: dict[str, Any]) -> tuple[str, dict[str, str], int] | None:
        labels = obj["spec"]["template"]["metadata"]["labels"]
        for pdb in self.rendered.of_kind("PodDisruptionBudget"):
            selector = pdb["spec"]["selector"]["matchLabels"]
            if all(labels.get(k) == v for k, v in selector.items()):
                return pdb["metadata"]["name"], selector, int(pdb["spec"]["maxUnavailable"])
        return None

    def check_disruption_allowed(self, obj: dict[str, Any]) -> None:
        budget = self._budget_for(obj)
        if budget is None:
            return
        name, selector, max_unavailable = budget
        unavailable = [p.name for p in self.pods() if self._selects(selector, p) and not p.ready]
        if len(unavailable) >= max_unavailable:
            raise AssertionError(f"PDB {name}: disruption refused, unavailable: {unavailable}")

    def note_readiness(self) -> None:
        """Record the most pods each budget saw unavailable at once."""
        for pdb in self.rendered.of_kind("PodDisruptionBudget"):
            selector = pdb["spec"]["selector"]["matchLabels"]
            matched = [p for p in self.pods() if self._selects(selector, p)]
            down = sum(1 for p in matched if p.started and not p.ready)
            name = pdb["metadata"]["name"]
            self.max_unavailable_seen[name] = max(self.max_unavailable_seen.get(name, 0), down)

    # --- whole release -----------------------------------------------------------------

    async def install(self, ready_timeout: float = 180.0) -> None:
        """What `helm install` creates: every workload at once, no ordering, no hooks."""
        for sts in self.statefulsets.values():
            await sts.create()
        for dep in self.rendered.of_kind("Deployment"):
            name = dep["metadata"]["name"]
            pods = [
                Pod(
                    self,
                    f"{name}-5f6d7c8b9-{i:05x}",
                    dep["spec"]["template"],
                    self.ip_for(f"{name}-{i}"),
                )
                for i in range(int(dep["spec"]["replicas"]))
            ]
            self.deployment_pods[name] = pods
            await asyncio.gather(*(p.start() for p in pods))
        await asyncio.gather(*(p.wait_ready(ready_timeout) for p in self.pods()))
        self.max_unavailable_seen.clear()

    def statefulset(self, component: str) -> StatefulSet:
        (sts,) = [s for n, s in self.statefulsets.items() if n.endswith(f"-{component}")]
        return sts

    async def helm_test(self, timeout: float = 120.0) -> tuple[int, str]:
        """`helm test`: run the test hook pod's command to completion."""
        (obj,) = [
            p
            for p in self.rendered.of_kind("Pod")
            if p["metadata"].get("annotations", {}).get("helm.sh/hook") == "test"
        ]
        pod = Pod(self, obj["metadata"]["name"], obj, self.ip_for(obj["metadata"]["name"]))
        env = pod.process_env()
        proc = await asyncio.create_subprocess_exec(
            *pod.argv(env),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env=env,
        )
        out, _ = await asyncio.wait_for(proc.communicate(), timeout)
        return int(proc.returncode or 0), out.decode(errors="replace")

    async def stop(self) -> None:
        for pods in self.deployment_pods.values():
            await asyncio.gather(*(p.terminate() for p in pods))
        for sts in reversed(list(self.statefulsets.values())):
            await asyncio.gather(*(p.terminate() for p in sts.pods.values()))

    def kill_all(self) -> None:
        for pod in self.pods():
            pod.kill()

    def log_tails(self, lines: int = 30) -> str:
        out = []
        for path in sorted((self.base / "logs").glob("*.log")):
            tail = path.read_text(errors="replace").splitlines()[-lines:]
            out.append(f"--- {path.name}\n" + "\n".join(tail))
        return "\n".join(out)


def kubeconfig_for(path: Path, server: str) -> Path:
    """A kubeconfig naming one API server (the pods' stand-in for in-cluster config)."""
    path.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "harness", "cluster": {"server": server}}],
                "users": [{"name": "pod", "user": {"token": "service-account"}}],
                "contexts": [{"name": "harness", "context": {"cluster": "harness", "user": "pod"}}],
                "current-context": "harness",
            }
        )
    )
    return path


@dataclass
class Workload:
    """Counts of a client workload's outcomes (see test_cluster)."""

    ok: int = 0
    failed: int = 0
    unknown: int = 0
    errors: dict[str, int] = field(default_factory=dict)
