"""The chart's pods run from the rendered manifests, under a client workload.

`manifest_cluster.Cluster` runs every rendered workload as local processes, exactly as
the manifests say (see manifest_cluster.py), with the raftnode StatefulSet held by a
kmock API-server emulator. A recorded client workload (gets, puts, CAS over a
few keys, through the gateway Service's DNS name) runs throughout; at the end
every key is read back and the whole history is judged by
`rangekv.check.check_history` (linearizable, so no acknowledged write lost).

* `test_rolling_restart`: `helm install`, `helm test`, then a rolling restart
  of the metarange and raftnode StatefulSets in StatefulSet order (highest
  ordinal first, one pod at a time, each only when the PDB allows it); every
  pod exits 0 within its grace period, no budget ever saw two pods down, and
  the workload saw no failed or unknown request.
* `test_scale_raftnodes_3_5_3`: five ranges after splits; scaled to 5, the new
  pods get fresh node ids and the rebalancer gives them replicas and leases;
  scaled back to 3, the two removed pods learn it from the API server on
  SIGTERM, decommission and exit 0; the registry says decommissioned, every
  range ends with 3 live voters on the remaining nodes, and their volumes
  are deleted (whenScaled: Delete).

The rolling restart runs with the chart's default, TLS (the two Secrets made
as the README says, mounted into the pods), and in plaintext; the scale test
with TLS.
RANGEKV_K8S_LONG=1 runs the workload longer between steps, and scales
3 -> 5 -> 3 twice (the second time the new pods are new nodes again).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import os
import random
import subprocess
import sys
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import kmock
import pytest
from chart import NAMESPACE, render
from manifest_cluster import Cluster, kubeconfig_for
from testkit.waiting import async_wait_for
from testkit.workload import ClientMix, Workload, WorkloadSpec

from rangekv.check.history import OpKind, Outcome
from rangekv.check.linearizability import check_history
from rangekv.common.certs import (
    CA_CERT,
    NODE_CERT,
    NODE_KEY,
    NODE_SERVER_NAME,
    Role,
    client_files,
    create_ca,
    create_client,
    create_node,
    write_atomic,
    write_pair,
)
from rangekv.common.config import SecurityConfig
from rangekv.common.dialing import HOSTS_FILE_ENV
from rangekv.common.tls import ChannelOpener, client_channels
from rangekv.metarange.client import MetaClient
from rangekv.v1 import kv_pb2_grpc, meta_pb2, replica_pb2, replica_pb2_grpc

pytestmark = pytest.mark.timeout(600)

LONG = os.environ.get("RANGEKV_K8S_LONG", "").strip().lower() in ("1", "true", "yes")
CLIENTS = 4
KEYS = [b"k8s-%c%d" % (c, i) for c in b"bgmrw" for i in range(3)]
OP_TIMEOUT = 10.0


def values(tls: bool) -> dict[str, Any]:
    """The chart's values for these tests: small and quick, otherwise the defaults."""
    return {
        "tls": {"enabled": tls},
        "gateway": {"replicas": 1, "settings": {"shutdown-grace-seconds": 2}},
        "metarange": {"settings": {"shutdown-grace-seconds": 1, "liveness-ttl": 4}},
        "raftnode": {
            "terminationGracePeriodSeconds": 150,
            "settings": {
                "rebalance-interval": 1,
                "registry-interval": 0.5,
                "shutdown-grace-seconds": 2,
                "split-check-interval": 1,
                "txn-expiry": 2,
            },
        },
    }


#: The kit's recorded workload: gets, puts of unique values and CAS from the last
#: value seen, over KEYS, through the gateway Service; a steady load, not a flood.
WORKLOAD = WorkloadSpec(
    keys=tuple(KEYS),
    clients=CLIENTS,
    scanners=0,
    mix=ClientMix(get=0.4, put=0.4, cas=0.2, pause=(0.005, 0.005)),
)


@contextlib.asynccontextmanager
async def running(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *, tls: bool
) -> AsyncIterator[Cluster]:
    """`helm install` of the chart into the harness, with the API-server emulator
    (and, with `tls`, the two Secrets the chart mounts)."""
    rendered = render(values(tls))
    async with kmock.KubernetesEmulator() as api, kmock.Server(api) as server:
        api.resources["apps/v1/statefulsets"] = {}

        def store(obj: dict[str, Any]) -> None:
            api.objects["apps/v1/statefulsets", NAMESPACE, obj["metadata"]["name"]] = obj

        for sts in rendered.of_kind("StatefulSet"):
            store(sts)
        cluster = Cluster(
            rendered,
            tmp_path,
            rng=random.Random(),
            kubeconfig=kubeconfig_for(tmp_path / "kubeconfig", str(server.url).rstrip("/")),
            api_update=store,
            say=lambda line: print(line, flush=True),
        )
        monkeypatch.setenv(HOSTS_FILE_ENV, str(cluster.hosts_path))
        if tls:
            make_secrets(cluster)
        try:
            await cluster.install()
            yield cluster
        except BaseException:
            print(cluster.log_tails(), flush=True)
            raise
        finally:
            # Teardown, not under test (the rolling restart's own terminations and
            # exit codes are asserted in the test body): stopping every pod at once
            # leaves no voter to take the leases a draining node hands off, so a pod
            # may use its whole grace period. Past 60 s, SIGKILL what is left.
            try:
                await asyncio.wait_for(cluster.stop(), 60)
            except TimeoutError:
                print("teardown: graceful stop took over 60s; killing the rest", flush=True)
            finally:
                cluster.kill_all()


def make_secrets(cluster: Cluster) -> None:
    """What an operator creates before `helm install` (README): a CA, the node
    identity naming what clients dial (the gateway Service), a client identity."""
    now = datetime.datetime.now(datetime.UTC)
    ca = create_ca(now)
    gateway = gateway_address(cluster).rsplit(":", 1)[0]
    node = create_node(ca, "node", [gateway, gateway.split(".")[0], "localhost"], now)
    node_dir = cluster.secret_dir("rangekv-node-certs")
    write_pair(node_dir, NODE_CERT, NODE_KEY, node, overwrite=False)
    client_dir = cluster.secret_dir("rangekv-client-certs")
    write_pair(
        client_dir,
        *client_files("root"),
        create_client(ca, "root", Role.ADMIN, now),
        overwrite=False,
    )
    for folder in (node_dir, client_dir):
        write_atomic(folder / CA_CERT, ca.cert_pem, 0o644)


def security(cluster: Cluster) -> SecurityConfig:
    """The test's own identity: the client Secret's files, or plaintext."""
    client_dir = cluster.secret_dir("rangekv-client-certs")
    if (client_dir / CA_CERT).exists():
        return SecurityConfig(certs_dir=client_dir)
    return SecurityConfig(insecure=True)


def channels(cluster: Cluster, *, internal: bool = False) -> ChannelOpener:
    """Channels to the gateway Service, or (`internal`) to nodes and meta replicas."""
    return client_channels(
        security(cluster),
        "root" if not security(cluster).insecure else None,
        server_name=NODE_SERVER_NAME if internal else None,
    )


def gateway_address(cluster: Cluster) -> str:
    svc = cluster.rendered.component("Service", "gateway")
    port = svc["spec"]["ports"][0]["port"]
    return f"{svc['metadata']['name']}.{NAMESPACE}.svc.cluster.local:{port}"


def meta_addresses(cluster: Cluster) -> list[str]:
    sts = cluster.rendered.component("StatefulSet", "metarange")
    env = {
        e["name"]: e.get("value") for e in sts["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    return [p.split("=", 1)[1] for p in str(env["RANGEKV_PEERS"]).split(",")]


@contextlib.asynccontextmanager
async def workload(cluster: Cluster) -> AsyncIterator[Workload]:
    async with channels(cluster)(gateway_address(cluster)) as channel:
        kv = kv_pb2_grpc.KVStub(channel)
        w = Workload(WORKLOAD, [kv], timeout=OP_TIMEOUT)
        w.start()
        try:
            yield w
        finally:
            await w.stop()
        # Read every key back once all writers stopped: the checker then also
        # proves that the last acknowledged value of each key survived.
        for key in KEYS:
            await w.kv.op(99, kv, OpKind.GET, key)


#: How often the tests poll cluster state.
POLL = 0.5


async def after_ops(w: Workload, n: int, timeout: float = 60.0) -> None:
    target = w.stats.acknowledged + n
    await async_wait_for(
        lambda: w.stats.acknowledged >= target,
        timeout,
        f"{n} more acknowledged operations",
        POLL,
    )


def judge(w: Workload) -> str:
    ops = w.operations()
    result = check_history(ops, timeout=120)
    assert result.ok is True, result.explanation
    return f"{len(ops)} operations, linearizable ({result.keys_checked} keys); {w.stats.report()}"


@pytest.mark.parametrize("tls", [True, False], ids=["tls", "plaintext"])
async def test_rolling_restart(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tls: bool) -> None:
    async with running(tmp_path, monkeypatch, tls=tls) as cluster:
        code, out = await cluster.helm_test()
        assert code == 0 and "put and get through" in out, out
        async with workload(cluster) as w:
            await after_ops(w, 100)
            codes = {}
            for component in ("metarange", "raftnode"):
                sts = cluster.statefulset(component)
                codes[component] = await sts.rolling_restart()
                await after_ops(w, 200 if LONG else 50)
        verdict = judge(w)
        print(f"rolling restart ({'tls' if tls else 'plaintext'}): {verdict}", flush=True)
        assert codes == {"metarange": [0, 0, 0], "raftnode": [0, 0, 0]}
        assert max(cluster.max_unavailable_seen.values()) == 1, cluster.max_unavailable_seen
        restarts = {p.name: p.restarts for p in cluster.pods() if "-gateway-" not in p.name}
        assert set(restarts.values()) == {1}, f"restarts besides the roll: {restarts}"
        assert w.stats.outcomes[Outcome.UNKNOWN.value] == 0, w.stats.report()
        assert w.stats.outcomes[Outcome.FAIL.value] == 0, w.stats.report()
        code, out = await cluster.helm_test()
        assert code == 0, out


def rangekv_cli(cluster: Cluster, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, HOSTS_FILE_ENV: str(cluster.hosts_path)}
    sec = security(cluster)
    if sec.insecure:
        env["RANGEKV_INSECURE"] = "1"
    else:
        env["RANGEKV_CERTS_DIR"] = str(sec.certs_dir)
    return subprocess.run(
        [sys.executable, "-m", "rangekv.cli.main", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )


async def node_view(meta: MetaClient) -> dict[int, meta_pb2.NodeStatus]:
    return {st.node.node_id: st for st in (await meta.list_nodes()).nodes}


async def layout(meta: MetaClient) -> list[Any]:
    resp = await meta.list_ranges(include_intents=True)
    return [] if resp.intents else list(resp.descriptors)


async def leases(cluster: Cluster, address: str) -> int:
    async with channels(cluster, internal=True)(address) as ch:
        info = await replica_pb2_grpc.ReplicaStub(ch).RangeInfo(
            replica_pb2.RangeInfoRequest(), timeout=5
        )
    return sum(1 for r in info.replicas if r.is_leader and r.lease_valid)


async def test_scale_raftnodes_3_5_3(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async with running(tmp_path, monkeypatch, tls=True) as cluster:
        meta_addrs = ",".join(meta_addresses(cluster))
        for key in ("g", "m", "r", "w"):
            last: list[str] = []

            async def split(key: str = key, last: list[str] = last) -> bool:
                done = await asyncio.to_thread(
                    rangekv_cli, cluster, "split", key, "--meta", meta_addrs, "--timeout", "30"
                )
                last.append(done.stderr)
                return done.returncode == 0  # a new range may have no leader yet: again

            try:
                await async_wait_for(split, 60, f"split at {key}", POLL)
            except TimeoutError as exc:
                raise AssertionError(f"{exc}: {last[-1]}") from None
        meta = MetaClient(
            meta_addresses(cluster), timeout=5, channels=channels(cluster, internal=True)
        )
        raftnodes = cluster.statefulset("raftnode")
        cycles = 2 if LONG else 1
        led: dict[int, int] = {}
        try:
            async with workload(cluster) as w:
                await after_ops(w, 100)
                for cycle in range(cycles):
                    # Fresh volumes: the new pods are new nodes (ids from the meta range).
                    new_ids = [4 + 2 * cycle, 5 + 2 * cycle]
                    await raftnodes.scale(5)
                    await raftnodes.wait_ready(120)

                    async def new_nodes_serve(
                        new_ids: list[int] = new_ids,
                    ) -> dict[int, int] | None:
                        nodes = await node_view(meta)
                        if not all(n in nodes for n in new_ids):
                            return None
                        descs = await layout(meta)
                        held = Counter(r.node_id for d in descs for r in d.replicas)
                        if not all(held[n] for n in new_ids):
                            return None
                        got = {n: await leases(cluster, nodes[n].node.address) for n in new_ids}
                        return got if all(got.values()) else None

                    led = await async_wait_for(
                        new_nodes_serve,
                        150,
                        f"nodes {new_ids} to hold replicas and leases",
                        POLL,
                    )
                    await after_ops(w, 200 if LONG else 50)
                    removed = await raftnodes.scale(3)
                    assert removed == {
                        f"{raftnodes.name}-3": 0,
                        f"{raftnodes.name}-4": 0,
                    }
                    await after_ops(w, 200 if LONG else 50)
            verdict = judge(w)
            print(
                f"scale 3 -> 5 -> 3 (x{cycles}): leases on new nodes {led}; {verdict}",
                flush=True,
            )

            async def settled() -> list[Any] | None:
                nodes = await node_view(meta)
                descs = await layout(meta)
                for d in descs:
                    voters = sorted(r.node_id for r in d.replicas if r.type == 1)
                    if voters != [1, 2, 3] or len(d.replicas) != 3:
                        return None
                return descs if all(nodes[n].live for n in (1, 2, 3)) else None

            descs = await async_wait_for(settled, 60, "every range on 3 live voters", POLL)
            assert len(descs) == 5
            nodes = await node_view(meta)
            retired = range(4, 4 + 2 * cycles)
            assert {n: nodes[n].state for n in nodes} == {
                **{n: meta_pb2.NODE_STATE_ACTIVE for n in (1, 2, 3)},
                **{n: meta_pb2.NODE_STATE_DECOMMISSIONED for n in retired},
            }
            assert not list((tmp_path / "pvc").glob(f"data-{raftnodes.name}-[34]"))
            assert w.stats.outcomes[Outcome.UNKNOWN.value] == 0, w.stats.report()
        finally:
            await meta.close()
