"""A local cluster of real processes: what `rangekv dev` runs and tests drive.

Every process is a child (`python -m rangekv.cli.main VERB ...`) with its own
log file; a child is ready when it logs its one ready line. Ports are chosen
once (gRPC and Prometheus ports alike, below the kernel's ephemeral range) and
kept in DATA/cluster.json so that a cluster started again on the same folder
resumes with the same addresses (the meta range's voters are static) and the
same metrics endpoints.

Secure unless asked otherwise: the cluster's certificates (a CA, one node
certificate every process shares, an ``admin`` client) are created under
DATA/certs on first start and reused after; ``insecure=True`` runs plaintext.
:meth:`LocalCluster.client_channels` and :meth:`LocalCluster.node_channels` open
channels to it the way a client and a node would.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import os
import random
import signal
import socket
import sys
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path

from rangekv.common.certs import NODE_SERVER_NAME, ensure_dev_certs
from rangekv.common.config import SecurityConfig
from rangekv.common.logs import parse_ready_line
from rangekv.common.tls import ChannelOpener, client_channels, node_channels

#: Where listening ports are picked from: below Linux's default ephemeral range
#: (32768-60999). A port the kernel handed out by binding to 0 comes FROM that
#: range, so after a process that listened on it dies, an outgoing connection of
#: any other process may be given it as its source port, and the restarted process
#: fails with "Address already in use" (seen in CI when a killed raftnode was
#: restarted on its port). Ports below the range are never handed out that way.
LISTEN_PORTS = range(20_000, 32_768)


def free_port(host: str = "127.0.0.1") -> int:
    """A port to listen on that is free now and stays out of the kernel's way."""
    return free_ports(1, host)[0]


def free_ports(n: int, host: str = "127.0.0.1", avoid: Collection[int] = ()) -> list[int]:
    """`n` distinct ports from LISTEN_PORTS that are free now (bound at once, released).

    `avoid` are ports already promised to other processes that have not bound
    them yet: they are free now, so only this list keeps them from being handed
    out twice (two children of one cluster on one port, seen in CI as "Address
    already in use").
    """
    if n <= 0:
        return []
    rng = random.SystemRandom()
    socks: list[socket.socket] = []
    try:
        for port in rng.sample(LISTEN_PORTS, min(len(LISTEN_PORTS), 50 * n + 100)):
            if port in avoid:
                continue
            s = socket.socket()
            try:
                s.bind((host, port))
            except OSError:
                s.close()
                continue
            socks.append(s)
            if len(socks) == n:
                return [int(x.getsockname()[1]) for x in socks]
        raise OSError(f"no {n} free ports in {LISTEN_PORTS} on {host}")
    finally:
        for s in socks:
            s.close()


def metrics_key(kind: str, index: int) -> str:
    """The name a process's metrics port is kept under in cluster.json (`node2`)."""
    return f"{kind}{index}"


@dataclass
class Layout:
    """Ports of every process, persisted so a restart finds the same cluster.

    `metrics` holds each process's Prometheus port (`meta1`, `node2`,
    `gateway1`, ...), chosen like the gRPC ports (below the ephemeral range) so
    that dashboards and scrape configs keep pointing at the same place across
    restarts. A cluster.json written before metrics ports were kept gets them
    added on its next start.
    """

    meta: dict[int, int]
    nodes: dict[int, int]
    gateways: list[int]
    metrics: dict[str, int] = field(default_factory=dict)

    def names(self) -> list[str]:
        """Every process's metrics key, in start order."""
        return [
            *(metrics_key("meta", i) for i in self.meta),
            *(metrics_key("node", i) for i in self.nodes),
            *(metrics_key("gateway", n + 1) for n in range(len(self.gateways))),
        ]

    @staticmethod
    def load_or_create(path: Path, n_meta: int, n_nodes: int, gateway_ports: list[int]) -> Layout:
        if path.exists():
            raw = json.loads(path.read_text())
            layout = Layout(
                {int(k): v for k, v in raw["meta"].items()},
                {int(k): v for k, v in raw["nodes"].items()},
                list(raw["gateways"]),
                {str(k): int(v) for k, v in raw.get("metrics", {}).items()},
            )
            layout.gateways = gateway_ports or layout.gateways
        else:
            # One call for every port, so no two processes are given the same.
            ports = free_ports(n_meta + n_nodes, avoid=set(gateway_ports))
            layout = Layout(
                dict(zip(range(1, n_meta + 1), ports[:n_meta], strict=True)),
                dict(zip(range(1, n_nodes + 1), ports[n_meta:], strict=True)),
                gateway_ports,
            )
        missing = [name for name in layout.names() if name not in layout.metrics]
        if missing or not path.exists():
            taken = {*layout.meta.values(), *layout.nodes.values(), *layout.gateways}
            taken |= set(layout.metrics.values())
            layout.metrics.update(zip(missing, free_ports(len(missing), avoid=taken), strict=True))
            layout.save(path)
        return layout

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(
            json.dumps(
                {
                    "meta": self.meta,
                    "nodes": self.nodes,
                    "gateways": self.gateways,
                    "metrics": self.metrics,
                }
            )
        )


@dataclass
class Child:
    """One process of the cluster and how to (re)start it."""

    name: str
    args: list[str]
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)
    proc: asyncio.subprocess.Process | None = None
    ready: dict[str, str] | None = None
    restarts: int = 0
    #: Prepended to the command line, e.g. ["ip", "netns", "exec", NS] (it must exec).
    prefix: list[str] = field(default_factory=list)
    _pump_task: asyncio.Task[None] | None = None

    @property
    def address(self) -> str:
        return (self.ready or {}).get("grpc", "")

    @property
    def metrics(self) -> str:
        return (self.ready or {}).get("metrics", "")

    async def start(self, timeout: float = 60.0) -> None:
        self.ready = None
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        self.proc = await asyncio.create_subprocess_exec(
            *self.prefix,
            sys.executable,
            "-m",
            "rangekv.cli.main",
            *self.args,
            stdout=log,
            stderr=asyncio.subprocess.PIPE,
            env={**os.environ, **self.env},
            start_new_session=True,
        )
        log.close()
        assert self.proc.stderr is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.ready is None:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise TimeoutError(
                    f"{self.name} did not become ready in {timeout}s; see {self.log_path}"
                )
            line = await asyncio.wait_for(self.proc.stderr.readline(), remaining)
            if not line:
                raise RuntimeError(f"{self.name} exited before it was ready; see {self.log_path}")
            self._append(line)
            self.ready = parse_ready_line(line.decode(errors="replace"))
        self._pump_task = asyncio.ensure_future(self._pump())

    def _append(self, line: bytes) -> None:
        with self.log_path.open("ab") as f:
            f.write(line)

    async def _pump(self) -> None:
        proc = self.proc
        if proc is None or proc.stderr is None:
            return
        while True:
            line = await proc.stderr.readline()
            if not line:
                return
            self._append(line)

    def signal(self, sig: int) -> None:
        if self.proc is not None and self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, sig)

    async def stop(self, timeout: float = 10.0) -> None:
        if self.proc is None or self.proc.returncode is not None:
            return
        self.signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(self.proc.wait(), timeout)
        except TimeoutError:
            self.signal(signal.SIGKILL)
            await self.proc.wait()


class LocalCluster:
    """metarange replicas, raftnodes and gateways on loopback, under one data folder."""

    def __init__(
        self,
        data: Path,
        *,
        n_meta: int = 3,
        n_nodes: int = 3,
        gateway_ports: list[int] | None = None,
        env: dict[str, str] | None = None,
        extra_node_args: list[str] | None = None,
        say: Callable[[str], None] = print,
        first_range_nodes: int = 0,
        insecure: bool = False,
        certs_dir: Path | None = None,
    ) -> None:
        """`first_range_nodes`: how many of the nodes (the lowest ids) hold the
        first range (0: all); the others start empty, for replicas to be added.
        `insecure`: plaintext; else mutual TLS with the certificates in `certs_dir`
        (default DATA/certs, created when missing)."""
        self.data = data
        self.say = say
        self.insecure = insecure
        self.certs_dir = None if insecure else (certs_dir or data / "certs")
        if self.certs_dir is not None:
            ensure_dev_certs(self.certs_dir, datetime.datetime.now(datetime.UTC), say)
        self.security = (
            SecurityConfig.plaintext()
            if self.certs_dir is None
            else SecurityConfig(certs_dir=self.certs_dir)
        )
        # --no-insecure: a RANGEKV_INSECURE in the environment must not meet --certs-dir.
        tls_args = (
            ["--insecure"]
            if self.certs_dir is None
            else ["--no-insecure", "--certs-dir", str(self.certs_dir)]
        )
        self.layout = Layout.load_or_create(
            data / "cluster.json", n_meta, n_nodes, gateway_ports or [free_port()]
        )
        meta_peers = ",".join(f"{i}=127.0.0.1:{p}" for i, p in self.layout.meta.items())
        node_peers = ",".join(f"{i}=127.0.0.1:{p}" for i, p in self.layout.nodes.items())
        initial = list(self.layout.nodes)[: first_range_nodes or None]
        node_ids = ",".join(str(i) for i in initial)
        self.meta_addrs = ",".join(f"127.0.0.1:{p}" for p in self.layout.meta.values())
        logs = data / "logs"
        env = env or {}
        self.meta = [
            Child(
                f"metarange {i}",
                [
                    "metarange",
                    "--node-id",
                    str(i),
                    "--listen-port",
                    str(port),
                    "--data-dir",
                    str(data / f"meta{i}"),
                    "--peers",
                    meta_peers,
                    "--first-range-nodes",
                    node_ids,
                    "--shutdown-grace-seconds",
                    "1",
                    "--metrics-port",
                    str(self.layout.metrics[metrics_key("meta", i)]),
                    *tls_args,
                ],
                logs / f"metarange{i}.log",
                env,
            )
            for i, port in self.layout.meta.items()
        ]
        self.nodes = [
            Child(
                f"raftnode {i}",
                [
                    "raftnode",
                    "--node-id",
                    str(i),
                    "--listen-port",
                    str(port),
                    "--data-dir",
                    str(data / f"node{i}"),
                    "--peers",
                    node_peers,
                    "--bootstrap-nodes",
                    node_ids,
                    "--meta-addrs",
                    self.meta_addrs,
                    "--shutdown-grace-seconds",
                    "1",
                    "--metrics-port",
                    str(self.layout.metrics[metrics_key("node", i)]),
                    *tls_args,
                    *(extra_node_args or []),
                ],
                logs / f"raftnode{i}.log",
                env,
            )
            for i, port in self.layout.nodes.items()
        ]
        self.gateways = [
            Child(
                f"gateway {n + 1}" if len(self.layout.gateways) > 1 else "gateway",
                [
                    "gateway",
                    "--listen-port",
                    str(port),
                    "--meta-addrs",
                    self.meta_addrs,
                    "--metrics-port",
                    str(self.layout.metrics[metrics_key("gateway", n + 1)]),
                    *tls_args,
                ],
                logs / f"gateway{n + 1}.log",
                env,
            )
            for n, port in enumerate(self.layout.gateways)
        ]
        self._watchers: list[asyncio.Task[None]] = []
        self.stopping = False

    def client_channels(self, name: str = "admin") -> ChannelOpener:
        """Channels as the client NAME (default the ``admin`` client), e.g. to a gateway.

        The server is checked to be a node of the cluster (as for :meth:`node_channels`)
        rather than by host name, so this works whatever address a process listens on."""
        return client_channels(self.security, name, server_name=NODE_SERVER_NAME)

    def node_channels(self) -> ChannelOpener:
        """Channels as a node of this cluster (for the internal Replica/Meta/raft APIs)."""
        return node_channels(self.security)

    @property
    def children(self) -> list[Child]:
        return [*self.meta, *self.nodes, *self.gateways]

    async def start(self) -> None:
        for group in (self.meta, self.nodes, self.gateways):
            await asyncio.gather(*(c.start() for c in group))
            for child in group:
                self.say(f"  started {child.name:<12} {child.address}")

    def watch(self, restart: bool = True) -> None:
        """Restart any child that dies (and say so) until `stop`."""
        for child in self.children:
            self._watchers.append(asyncio.ensure_future(self._watch(child, restart)))

    async def _watch(self, child: Child, restart: bool) -> None:
        while not self.stopping:
            proc = child.proc
            if proc is None:
                return
            code = await proc.wait()
            if self.stopping or not restart:
                return
            self.say(f"rangekv dev: {child.name} exited with code {code}; restarting it")
            child.restarts += 1
            await asyncio.sleep(min(5.0, 0.2 * child.restarts))
            try:
                await child.start()
                self.say(f"rangekv dev: {child.name} is back at {child.address}")
            except (TimeoutError, RuntimeError) as exc:
                self.say(f"rangekv dev: {exc}")

    async def stop(self) -> None:
        self.stopping = True
        for task in self._watchers:
            task.cancel()
        for group in (self.gateways, self.nodes, self.meta):
            await asyncio.gather(*(c.stop() for c in group))
