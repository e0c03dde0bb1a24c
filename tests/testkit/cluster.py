"""The one launcher of real-process test clusters, built on `rangekv.cli.cluster.LocalCluster`.

`LocalCluster` is what `rangekv dev` runs: it picks ports, makes the cluster's
certificates and knows every process's command line. A test cluster is one
of those, of which any subset of the three groups runs:

* everything (metarange replicas, raftnodes, gateways): the gateway, split,
  replica-change, tracing, security and chaos tests;
* raftnodes only (`n_meta=0`, `n_gateways=0`): nodes with no meta range
  address, as the storage-node tests and benchmark drive them;
* the meta range only (`groups=("meta",)`): the first range still names the
  raftnodes 1..n, which are described but never started.

So every suite starts a process the same way an operator does (flags, RocksDB
on disk, mutual TLS, signals), and waits for the same thing: its one ready line.

What the kit adds to `LocalCluster`: process control by node id (kill -9,
SIGSTOP, graceful stop, restart with another environment), a child's
environment free of the caller's RANGEKV_ variables (a developer's shell
cannot change what a test runs), log tails for failure reports, and teardown
that always leaves nothing running. Everything is asyncio: a cluster belongs
to the event loop that started it (asyncio subprocesses, grpc.aio channels).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from rangekv.cli.cluster import Child, LocalCluster, free_ports
from rangekv.common.config import SecurityConfig
from rangekv.common.tls import ChannelOpener
from testkit.metrics import fetch_metrics

__all__ = [
    "GROUPS",
    "META_ONLY",
    "NODES_ONLY",
    "SPARE_NODE",
    "Cluster",
    "ClusterSpec",
    "alive",
    "running_cluster",
]

#: The groups of processes, in start order.
GROUPS = ("meta", "nodes", "gateways")


@dataclass(frozen=True)
class ClusterSpec:
    """What a test cluster is made of and how its processes are started."""

    n_meta: int = 3
    #: 0 metarange replicas: the raftnodes run without a meta range address.
    n_nodes: int = 3
    #: 0 gateways: none runs.
    n_gateways: int = 1
    #: How many of the nodes (the lowest ids) hold the first range (0: all).
    first_range_nodes: int = 0
    #: Which groups start (see the module docstring); a group of 0 processes never does.
    groups: tuple[str, ...] = GROUPS
    node_args: tuple[str, ...] = ()
    meta_args: tuple[str, ...] = ()
    gateway_args: tuple[str, ...] = ()
    #: The addresses of a meta range this cluster does not run (e.g. scripted peers in
    #: the test's own process), given to its raftnodes and gateways; needs `n_meta=0`.
    meta_addrs: tuple[str, ...] = ()
    #: Extra environment of every process.
    env: Mapping[str, str] = field(default_factory=dict)
    #: Extra environment of single raftnodes (over `env`), by node id.
    node_env: Mapping[int, Mapping[str, str]] = field(default_factory=dict)
    insecure: bool = False
    #: The cluster's certificates (default: made under the cluster's folder).
    certs_dir: Path | None = None


#: Three raftnodes bootstrapping range 1 together, no meta range, no gateway.
NODES_ONLY = ClusterSpec(n_meta=0, n_gateways=0)
#: Three metarange replicas whose first range names raftnodes 1, 2, 3 (never started).
META_ONLY = ClusterSpec(n_gateways=0, groups=("meta",))
#: Four raftnodes, the first range on nodes 1-3 (node 4 spare), and every background
#: loop quick: transaction expiry, split checks, registry heartbeats and the rebalancer
#: within a second, a node dead 2 s after its liveness (TTL 2 s) lapsed.
SPARE_NODE = ClusterSpec(
    n_nodes=4,
    first_range_nodes=3,
    node_args=(
        *("--txn-expiry", "1.0", "--split-check-interval", "0.5"),
        *("--registry-interval", "0.5", "--rebalance-interval", "0.5", "--dead-after", "2"),
    ),
    env={"RANGEKV_LIVENESS_TTL": "2"},
)


def alive(child: Child) -> bool:
    """Whether the child's current process is running (or stopped by a signal)."""
    return child.proc is not None and child.proc.returncode is None


class Cluster:
    """A `LocalCluster` under `base` run the way a test needs it; see the module docstring."""

    def __init__(
        self,
        base: Path,
        spec: ClusterSpec | None = None,
        *,
        say: Callable[[str], None] | None = None,
    ) -> None:
        self.spec = spec = spec or ClusterSpec()
        self.base = base
        self.say = say or (lambda _line: None)
        self.lc = LocalCluster(
            base,
            n_meta=spec.n_meta,
            n_nodes=spec.n_nodes,
            gateway_ports=free_ports(max(1, spec.n_gateways)),
            env=dict(spec.env),
            extra_node_args=list(spec.node_args),
            say=self.say,
            first_range_nodes=spec.first_range_nodes,
            insecure=spec.insecure,
            certs_dir=spec.certs_dir,
        )
        for child in self.lc.meta:
            child.args += spec.meta_args
        for child in self.lc.gateways:
            child.args += spec.gateway_args
        if spec.meta_addrs:
            assert spec.n_meta == 0, "a cluster runs its own meta range or uses another's"
            self.lc.meta_addrs = ",".join(spec.meta_addrs)
            for child in [*self.lc.nodes, *self.lc.gateways]:
                child.args[child.args.index("--meta-addrs") + 1] = self.lc.meta_addrs
        for node_id, env in spec.node_env.items():
            self.node(node_id).env = {**spec.env, **env}
        counts = {"meta": spec.n_meta, "nodes": spec.n_nodes, "gateways": spec.n_gateways}
        #: The groups that run, in start order.
        self.groups = [g for g in GROUPS if g in spec.groups and counts[g] > 0]
        #: Children stopped with SIGSTOP (`pause`), by name.
        self.paused: set[str] = set()
        #: A command prefix per child name (e.g. a network namespace), see `place`.
        self._placement: dict[str, list[str]] = {}

    # --- the processes ----------------------------------------------------------------

    @property
    def meta(self) -> list[Child]:
        return self.lc.meta if "meta" in self.groups else []

    @property
    def nodes(self) -> list[Child]:
        return self.lc.nodes if "nodes" in self.groups else []

    @property
    def gateways(self) -> list[Child]:
        return self.lc.gateways if "gateways" in self.groups else []

    @property
    def children(self) -> list[Child]:
        """Every child of the groups that run, in start order."""
        return [*self.meta, *self.nodes, *self.gateways]

    @property
    def node_ids(self) -> list[int]:
        return list(self.lc.layout.nodes)

    @property
    def meta_ids(self) -> list[int]:
        return list(self.lc.layout.meta)

    def node(self, node_id: int) -> Child:
        return self.lc.nodes[self.node_ids.index(node_id)]

    def meta_replica(self, replica_id: int) -> Child:
        return self.lc.meta[self.meta_ids.index(replica_id)]

    def node_address(self, node_id: int) -> str:
        """Where node `node_id` listens (from its ready line once it ran)."""
        return self.node(node_id).address or f"127.0.0.1:{self.lc.layout.nodes[node_id]}"

    def meta_address(self, replica_id: int) -> str:
        """Where metarange replica `replica_id` listens (from its ready line once it ran)."""
        child = self.meta_replica(replica_id)
        return child.address or f"127.0.0.1:{self.lc.layout.meta[replica_id]}"

    @property
    def node_addresses(self) -> dict[int, str]:
        return {i: self.node_address(i) for i in self.node_ids}

    @property
    def security(self) -> SecurityConfig:
        """How a process of this cluster secures its channels (mutual TLS, or plaintext)."""
        return self.lc.security

    @property
    def certs_dir(self) -> Path | None:
        """The cluster's certificates (None: plaintext)."""
        return self.lc.certs_dir

    @property
    def meta_addrs(self) -> list[str]:
        """The meta range's addresses, as the nodes and gateways are given them."""
        return [a for a in self.lc.meta_addrs.split(",") if a]

    def running_node_ids(self) -> list[int]:
        return [i for i in self.node_ids if alive(self.node(i))]

    # --- channels ---------------------------------------------------------------------

    def node_channels(self) -> ChannelOpener:
        """Channels as a node of the cluster (Replica, Meta, raft APIs)."""
        return self.lc.node_channels()

    def client_channels(self, name: str = "admin") -> ChannelOpener:
        """Channels as the client NAME (the public KV and Admin APIs)."""
        return self.lc.client_channels(name)

    async def metrics(self, child: Child) -> str:
        """The child's Prometheus text (its metrics address is in its ready line)."""
        return await asyncio.to_thread(fetch_metrics, child.metrics)

    # --- lifecycle --------------------------------------------------------------------

    async def start(self) -> None:
        """Start every group that runs, one group after the other, each all at once."""
        by_group = {"meta": self.lc.meta, "nodes": self.lc.nodes, "gateways": self.lc.gateways}
        for group in self.groups:
            await self.start_children(by_group[group])

    async def start_children(self, children: Iterable[Child], timeout: float = 60.0) -> None:
        """Start `children` at once and wait for each one's ready line."""
        started = list(children)
        await asyncio.gather(*(self._start(c, timeout) for c in started))
        for child in started:
            self.say(f"  started {child.name:<12} {child.address}")

    async def _start(self, child: Child, timeout: float) -> None:
        # RANGEKV_ variables of this process that the child is not given are unset
        # for it (`env -u` execs the command), so a shell cannot change a test.
        inherited = sorted(k for k in os.environ if k.startswith("RANGEKV_") and k not in child.env)
        unset = ["env", *(arg for name in inherited for arg in ("-u", name))] if inherited else []
        child.prefix = [*self._placement.get(child.name, []), *unset]
        await child.start(timeout)

    def place(self, child: Child, prefix: list[str]) -> None:
        """Run `child` behind a command prefix from its next start on (it must exec;
        e.g. `ip netns exec NS`)."""
        self._placement[child.name] = list(prefix)

    async def restart(
        self, child: Child, *, env: Mapping[str, str] | None = None, timeout: float = 60.0
    ) -> None:
        """kill -9 (if it runs) and start again on the same port and data, optionally
        with another environment."""
        if alive(child):
            await self.kill(child)
        if env is not None:
            child.env = dict(env)
        await self.start_children([child], timeout)

    async def kill(self, *children: Child) -> None:
        """kill -9, all at once (nothing unsynced is flushed), and reap."""
        for child in children:
            child.signal(signal.SIGCONT)
            child.signal(signal.SIGKILL)
            self.paused.discard(child.name)
        await self.reap(*children)

    async def reap(self, *children: Child) -> None:
        """Wait for the children's processes to end (after a signal sent by hand)."""
        for child in children:
            await _reap(child)

    async def stop(self, *children: Child) -> None:
        """SIGTERM (graceful; SIGKILL after 10 s), in parallel; default every child."""
        chosen = list(children) or self.children
        await asyncio.gather(*(c.stop() for c in chosen))
        await self.reap(*chosen)

    def pause(self, *children: Child) -> None:
        """SIGSTOP: the process keeps its sockets but answers nothing until `resume`."""
        for child in children:
            child.signal(signal.SIGSTOP)
            self.paused.add(child.name)

    def resume(self, *children: Child) -> None:
        for child in children:
            child.signal(signal.SIGCONT)
            self.paused.discard(child.name)

    def usable(self, child: Child) -> bool:
        """Running and not paused: worth asking."""
        return alive(child) and child.name not in self.paused

    async def close(self) -> None:
        """Kill -9 whatever still runs and reap it (teardown; nothing is read after)."""
        await self.kill(*self.lc.children)

    def kill_all_now(self) -> None:
        """Synchronous last resort when the event loop is gone: SIGKILL every process."""
        for child in self.lc.children:
            if alive(child):
                assert child.proc is not None
                with contextlib.suppress(ProcessLookupError):
                    os.kill(child.proc.pid, signal.SIGKILL)

    # --- logs -------------------------------------------------------------------------

    def log_tails(self, lines: int = 40) -> str:
        """The end of every child's log: what a failure in another process is debugged by."""
        parts = []
        for child in self.children:
            try:
                text = child.log_path.read_text(errors="replace").splitlines()[-lines:]
            except OSError as exc:
                text = [f"<no log: {exc}>"]
            state = "running" if alive(child) else "stopped"
            parts.append(f"----- {child.name} ({state}) {child.log_path} -----\n" + "\n".join(text))
        return "\n".join(parts)


async def _reap(child: Child) -> None:
    """Wait for the child's process and for the task copying its stderr to the log."""
    if child.proc is not None:
        await child.proc.wait()
    pump = child._pump_task  # finishes at the end of the dead process's stderr
    if pump is not None:
        with contextlib.suppress(Exception):
            await pump


@contextlib.asynccontextmanager
async def running_cluster(
    base: Path, spec: ClusterSpec | None = None, *, say: Callable[[str], None] | None = None
) -> AsyncIterator[Cluster]:
    """A started cluster that is killed whatever happens (for code outside pytest,
    such as the benchmarks; tests use the `clusters` fixture)."""
    cluster = Cluster(base, spec, say=say)
    try:
        await cluster.start()
        yield cluster
    finally:
        await cluster.close()
