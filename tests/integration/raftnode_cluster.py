"""A harness for real-process raftnode clusters on loopback.

Each node is a separate OS process (`python -m rangekv.cli.main raftnode ...`)
with its stderr in a log file of its own, so a test exercises exactly what an
operator runs: flag parsing, RocksDB on disk, gRPC between processes, signals.
The harness is deliberately free of pytest so that benchmarks and later
gateway/chaos tests can use it as a library; the pytest glue (a fixture that
always cleans up and a report section with every node's log tail on failure)
lives in `conftest.py` beside it.

Synchronisation is by observable condition only: a node is up when its log
holds the ready line, a leader exists when RangeInfo says so. Every wait polls
a condition with a deadline and fails with a message naming what it waited
for; nothing sleeps in the hope that something has happened meanwhile.

Ports are chosen up front (bind 127.0.0.1:0, close) because every node must
know every peer's address in `--peers` before any of them starts, and a
restarted node must come back on the same port and data dir.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import inspect
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import grpc

from rangekv.cli.cluster import free_ports
from rangekv.common.certs import ensure_dev_certs
from rangekv.common.config import SecurityConfig
from rangekv.common.logs import parse_ready_line
from rangekv.common.tls import ChannelOpener, node_channels
from rangekv.v1 import errors_pb2, replica_pb2, replica_pb2_grpc

__all__ = [
    "CHANNEL_OPTIONS",
    "RANGE_ID",
    "ClusterClient",
    "NodeProcess",
    "RaftnodeCluster",
    "ReplicaCallError",
    "WriteOutcomeUnknown",
    "async_wait_for",
    "cas_op",
    "delete_op",
    "fetch_metrics",
    "free_ports",
    "get_op",
    "metric_value",
    "put_op",
    "scan_op",
    "wait_for",
]

#: The range every bootstrapped cluster starts with: the whole keyspace.
RANGE_ID = 1

#: Big enough for snapshot-sized reads in tests (the server allows 64 MiB).
CHANNEL_OPTIONS: Sequence[tuple[str, int]] = (
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    ("grpc.max_send_message_length", 64 * 1024 * 1024),
)

T = TypeVar("T")


# ----------------------------------------------------------------------------- waiting


def wait_for(pred: Callable[[], T], timeout: float, what: str, interval: float = 0.02) -> T:
    """Poll `pred` until it returns something truthy; return that, or fail after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout:.1f}s waiting for {what}")
        time.sleep(interval)  # polling interval of a condition with a deadline


async def async_wait_for(
    pred: Callable[[], Any], timeout: float, what: str, interval: float = 0.05
) -> Any:
    """Async `wait_for`: `pred` may be a plain function or return an awaitable."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = pred()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if loop.time() >= deadline:
            raise TimeoutError(f"timed out after {timeout:.1f}s waiting for {what}")
        await asyncio.sleep(interval)  # polling interval of a condition with a deadline


# ----------------------------------------------------------------------------- processes


class NodeProcess:
    """One raftnode OS process that can be started, killed and restarted in place.

    Every incarnation appends to the same log file after a marker line, and
    readiness is looked for only after the current incarnation's offset, so a
    restart never mistakes the previous incarnation's ready line for its own.
    """

    def __init__(
        self,
        node_id: int,
        port: int,
        data_dir: Path,
        log_path: Path,
        argv: Sequence[str],
        env: Mapping[str, str],
    ) -> None:
        self.node_id = node_id
        self.port = port
        self.data_dir = data_dir
        self.log_path = log_path
        self.argv = list(argv)
        self.env = dict(env)
        self.proc: subprocess.Popen[bytes] | None = None
        self.ready: dict[str, str] | None = None
        self.incarnation = 0
        self._log_offset = 0

    @property
    def grpc_address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def metrics_address(self) -> str:
        """From the ready line: the metrics port is picked by the node (port 0)."""
        if self.ready is None or self.ready.get("metrics") in (None, "disabled"):
            raise RuntimeError(f"node {self.node_id} is not ready or has no metrics endpoint")
        return self.ready["metrics"]

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> None:
        if self.running:
            raise RuntimeError(f"node {self.node_id} is already running")
        self.incarnation += 1
        self.ready = None
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            log.write(
                f"=== harness: start of node {self.node_id} #{self.incarnation} ===\n".encode()
            )
            log.flush()
            self._log_offset = log.tell()
            self.proc = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                env=self.env,
                start_new_session=True,  # a Ctrl-C of the test run is not delivered to nodes
            )

    def _new_log_text(self) -> str:
        with self.log_path.open("rb") as log:
            log.seek(self._log_offset)
            return log.read().decode(errors="replace")

    def poll_ready(self) -> dict[str, str] | None:
        """The parsed ready line of this incarnation, if logged yet; raises if the process died."""
        if self.ready is not None:
            return self.ready
        for line in self._new_log_text().splitlines():
            fields = parse_ready_line(line)
            if fields is not None and fields.get("service") == "raftnode":
                self.ready = fields
                return fields
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(
                f"node {self.node_id} exited with {self.proc.returncode} before it was ready:\n"
                + self.log_tail()
            )
        return None

    def wait_ready(self, timeout: float = 30.0) -> dict[str, str]:
        return wait_for(self.poll_ready, timeout, f"node {self.node_id}'s ready line")

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs, nothing unsynced is flushed by the process."""
        self._signal_and_wait(signal.SIGKILL, 10.0)

    def terminate(self, timeout: float = 15.0) -> int | None:
        """SIGTERM and wait for a graceful exit (SIGKILL if it takes longer than `timeout`)."""
        if not self.running:
            return self.proc.returncode if self.proc else None
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return None

    def _signal_and_wait(self, sig: signal.Signals, timeout: float) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(sig)
        self.proc.wait(timeout)

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_bytes().decode(errors="replace")
        except FileNotFoundError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])


class RaftnodeCluster:
    """N raftnode processes on 127.0.0.1 bootstrapping range 1 together.

    `args` are extra command-line flags for every node, `env` extra
    environment (e.g. RANGEKV_FSM_SYNC_MODE); RANGEKV_* variables of the
    calling environment are NOT inherited, so a developer's shell cannot
    change what a test runs.
    """

    def __init__(
        self,
        base_dir: Path,
        n: int = 3,
        *,
        args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        python: str = sys.executable,
    ) -> None:
        self.base_dir = base_dir
        base_dir.mkdir(parents=True, exist_ok=True)
        ports = free_ports(n)
        ids = list(range(1, n + 1))
        self.ports = dict(zip(ids, ports, strict=True))
        self.peers = ",".join(f"{i}=127.0.0.1:{p}" for i, p in self.ports.items())
        # Mutual TLS, as in production: one CA and node certificate for the cluster.
        self.certs_dir = base_dir / "certs"
        ensure_dev_certs(self.certs_dir, datetime.datetime.now(datetime.UTC))
        self.channels = node_channels(SecurityConfig(certs_dir=self.certs_dir))
        node_env = {k: v for k, v in os.environ.items() if not k.startswith("RANGEKV_")}
        node_env.update(env or {})
        self.nodes: dict[int, NodeProcess] = {}
        for i in ids:
            argv = [
                python,
                "-m",
                "rangekv.cli.main",
                "raftnode",
                "--node-id",
                str(i),
                "--listen-port",
                str(self.ports[i]),
                "--metrics-port",
                "0",
                "--data-dir",
                str(base_dir / f"n{i}"),
                "--peers",
                self.peers,
                "--bootstrap-nodes",
                ",".join(map(str, ids)),
                "--certs-dir",
                str(self.certs_dir),
                *args,
            ]
            self.nodes[i] = NodeProcess(
                i, self.ports[i], base_dir / f"n{i}", base_dir / f"n{i}.log", argv, node_env
            )

    # --- lifecycle -------------------------------------------------------------------

    def start(self, timeout: float = 45.0) -> None:
        """Start every node that is not running and wait for all of them to be ready."""
        self.start_nodes(list(self.nodes), timeout=timeout)

    def start_nodes(self, node_ids: Iterable[int], timeout: float = 45.0) -> None:
        ids = list(node_ids)
        for i in ids:
            self.nodes[i].start()
        wait_for(
            lambda: all(self.nodes[i].poll_ready() for i in ids),
            timeout,
            f"ready lines of nodes {ids}",
        )

    def kill(self, node_id: int) -> None:
        self.nodes[node_id].kill()

    def terminate(self, node_id: int) -> None:
        self.nodes[node_id].terminate()

    def restart(self, node_id: int, *, kill: bool = True, timeout: float = 45.0) -> None:
        """Stop the node (SIGKILL, or SIGTERM if `kill` is false) and start it on the same
        port and data dir."""
        node = self.nodes[node_id]
        node.kill() if kill else node.terminate()
        self.start_nodes([node_id], timeout=timeout)

    def kill_all(self) -> None:
        for node in self.nodes.values():
            node.kill()

    def close(self) -> None:
        """Kill every process still running. Idempotent; used by finalizers."""
        for node in self.nodes.values():
            with contextlib.suppress(Exception):
                node.kill()

    def __enter__(self) -> RaftnodeCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- observation ----------------------------------------------------------------

    @property
    def addresses(self) -> dict[int, str]:
        return {i: n.grpc_address for i, n in self.nodes.items()}

    def running_ids(self) -> list[int]:
        return [i for i, n in self.nodes.items() if n.running]

    def client(self) -> ClusterClient:
        """A client for this cluster; create it inside the event loop that uses it."""
        return ClusterClient(self.addresses, self.channels)

    async def metrics(self, node_id: int) -> str:
        return await asyncio.to_thread(fetch_metrics, self.nodes[node_id].metrics_address)

    def log_tails(self, lines: int = 40) -> str:
        parts = []
        for i, node in self.nodes.items():
            state = "running" if node.running else "stopped"
            parts.append(f"----- node {i} ({state}) {node.log_path} -----\n{node.log_tail(lines)}")
        return "\n".join(parts)


# ----------------------------------------------------------------------------- metrics


def fetch_metrics(address: str, timeout: float = 5.0) -> str:
    """The Prometheus text exposition of a node (`address` from its ready line)."""
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=timeout) as resp:
        return resp.read().decode()  # type: ignore[no-any-return]


_SAMPLE = re.compile(r"^(?P<name>[a-zA-Z_:][\w:]*)(?:\{(?P<labels>[^}]*)\})?\s+(?P<value>\S+)")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def metric_value(text: str, name: str, **labels: str) -> float:
    """Sum of the samples named `name` whose labels include `labels` (0 if none)."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        m = _SAMPLE.match(line)
        if m is None or m.group("name") != name:
            continue
        have = dict(_LABEL.findall(m.group("labels") or ""))
        if all(have.get(k) == v for k, v in labels.items()):
            total += float(m.group("value"))
    return total


# ----------------------------------------------------------------------------- client


def put_op(key: bytes, value: bytes) -> replica_pb2.ReplicaOp:
    return replica_pb2.ReplicaOp(put=replica_pb2.PutOp(key=key, value=value))


def get_op(key: bytes) -> replica_pb2.ReplicaOp:
    return replica_pb2.ReplicaOp(get=replica_pb2.GetOp(key=key))


def delete_op(key: bytes) -> replica_pb2.ReplicaOp:
    return replica_pb2.ReplicaOp(delete=replica_pb2.DeleteOp(key=key))


def cas_op(key: bytes, expected: bytes | None, new_value: bytes) -> replica_pb2.ReplicaOp:
    """`expected=None` means "only if absent"."""
    return replica_pb2.ReplicaOp(
        compare_and_swap=replica_pb2.CompareAndSwapOp(
            key=key,
            expected_value=expected or b"",
            expect_absent=expected is None,
            new_value=new_value,
        )
    )


def scan_op(start: bytes, end: bytes = b"", limit: int = 0) -> replica_pb2.ReplicaOp:
    return replica_pb2.ReplicaOp(scan=replica_pb2.ScanOp(start_key=start, end_key=end, limit=limit))


_WRITE_KINDS = frozenset({"put", "delete", "compare_and_swap"})


class ReplicaCallError(Exception):
    """A batch answered with an in-band error that retrying elsewhere cannot fix."""

    def __init__(self, node_id: int, error: errors_pb2.ReplicaError) -> None:
        super().__init__(f"node {node_id}: {error.WhichOneof('error')}: {error}")
        self.node_id = node_id
        self.error = error


class WriteOutcomeUnknown(Exception):
    """A write may or may not have been applied (the call failed after it was sent)."""


class ClusterClient:
    """Async gRPC access to a cluster's nodes, with leaseholder routing.

    `batch` is one raw call to one node. `send` routes: it starts at `via` (or
    the last known leaseholder), follows NotLeaseHolder hints, moves on from
    unreachable nodes and retries UNAVAILABLE answers, all bounded by a
    deadline. A write whose outcome is unknown (the RPC failed after it may have
    reached a leader, or the node said so) is never retried: it raises
    WriteOutcomeUnknown so the caller can account for it.

    grpc.aio channels belong to the event loop that created them: make a
    client inside the loop (asyncio.run) that uses it, and close it there.
    """

    def __init__(self, addresses: Mapping[int, str], channels: ChannelOpener) -> None:
        self.addresses = dict(addresses)
        self._open = channels
        self._channels: dict[int, grpc.aio.Channel] = {}
        self._stubs: dict[int, replica_pb2_grpc.ReplicaStub] = {}
        self.leader_hint = min(self.addresses)
        #: How routed calls went: attempts, hints followed, rpc errors, unavailable answers.
        self.stats = {"attempts": 0, "hints": 0, "rpc_errors": 0, "unavailable": 0}

    def stub(self, node_id: int) -> replica_pb2_grpc.ReplicaStub:
        stub = self._stubs.get(node_id)
        if stub is None:
            channel = self._open(self.addresses[node_id], CHANNEL_OPTIONS)
            self._channels[node_id] = channel
            stub = self._stubs[node_id] = replica_pb2_grpc.ReplicaStub(channel)
        return stub

    async def reset(self, node_id: int) -> None:
        """Drop the channel of a node (e.g. after it restarted) so the next call reconnects."""
        channel = self._channels.pop(node_id, None)
        self._stubs.pop(node_id, None)
        if channel is not None:
            await channel.close()

    async def close(self) -> None:
        for node_id in list(self._channels):
            await self.reset(node_id)

    async def __aenter__(self) -> ClusterClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # --- raw calls --------------------------------------------------------------------

    async def batch(
        self,
        node_id: int,
        ops: Sequence[replica_pb2.ReplicaOp],
        *,
        inconsistent: bool = False,
        timeout: float = 10.0,
        range_id: int = RANGE_ID,
    ) -> replica_pb2.ReplicaBatchResponse:
        """One Batch call to one node; gRPC failures raise grpc.aio.AioRpcError."""
        req = replica_pb2.ReplicaBatchRequest(
            range_id=range_id, ops=list(ops), inconsistent=inconsistent
        )
        return await self.stub(node_id).Batch(req, timeout=timeout)

    async def range_info(
        self, node_id: int, timeout: float = 2.0
    ) -> replica_pb2.ReplicaInfo | None:
        """This node's view of range 1, or None if it is unreachable or has no replica."""
        try:
            resp = await self.stub(node_id).RangeInfo(
                replica_pb2.RangeInfoRequest(range_ids=[RANGE_ID]), timeout=timeout
            )
        except grpc.aio.AioRpcError:
            return None
        return resp.replicas[0] if resp.replicas else None

    async def range_infos(
        self, node_ids: Iterable[int] | None = None
    ) -> dict[int, replica_pb2.ReplicaInfo | None]:
        ids = list(node_ids if node_ids is not None else self.addresses)
        infos = await asyncio.gather(*(self.range_info(i) for i in ids))
        return dict(zip(ids, infos, strict=True))

    async def current_leaseholder(self, node_ids: Iterable[int] | None = None) -> int | None:
        """The node that is raft leader with a valid lease (highest term wins), if any."""
        infos = await self.range_infos(node_ids)
        holders = [
            (info.lease_sequence, node)
            for node, info in infos.items()
            if info is not None and info.is_leader and info.lease_valid
        ]
        return max(holders)[1] if holders else None

    async def leaseholder(
        self, node_ids: Iterable[int] | None = None, timeout: float = 20.0
    ) -> int:
        """Wait until some node holds a valid lease; returns its id."""
        ids = list(node_ids) if node_ids is not None else None
        node: int = await async_wait_for(
            lambda: self.current_leaseholder(ids), timeout, "a leaseholder"
        )
        self.leader_hint = node
        return node

    # --- routed calls -----------------------------------------------------------------

    async def send(
        self,
        ops: Sequence[replica_pb2.ReplicaOp],
        *,
        via: int | None = None,
        timeout: float = 15.0,
        rpc_timeout: float = 5.0,
        inconsistent: bool = False,
        max_attempts: int = 200,
    ) -> tuple[int, replica_pb2.ReplicaBatchResponse]:
        """Route a batch to the leaseholder; returns (node that served it, response).

        Raises ReplicaCallError for in-band errors that no retry fixes
        (invalid_argument, range_key_mismatch, range_not_found, intent_exists),
        WriteOutcomeUnknown, or TimeoutError when the deadline passes.
        """
        is_write = any(op.WhichOneof("op") in _WRITE_KINDS for op in ops)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        node = via if via is not None else self.leader_hint
        ids = sorted(self.addresses)
        history: list[str] = []
        for _attempt in range(max_attempts):
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            self.stats["attempts"] += 1
            try:
                resp = await self.batch(
                    node, ops, inconsistent=inconsistent, timeout=min(rpc_timeout, remaining)
                )
            except grpc.aio.AioRpcError as exc:
                self.stats["rpc_errors"] += 1
                history.append(f"n{node}:{exc.code().name}")
                nxt = ids[(ids.index(node) + 1) % len(ids)]
                if self.leader_hint == node:
                    self.leader_hint = nxt
                if is_write:
                    raise WriteOutcomeUnknown(f"node {node}: {exc.code().name}") from exc
                node = nxt
                await asyncio.sleep(0.05)  # retry backoff
                continue
            kind = resp.error.WhichOneof("error") if resp.HasField("error") else None
            if kind is None:
                self.leader_hint = node
                return node, resp
            if kind == "not_lease_holder":
                hint = resp.error.not_lease_holder.leaseholder.node_id
                history.append(f"n{node}:NLH->{hint or '?'}")
                if hint and hint != node and hint in self.addresses:
                    self.stats["hints"] += 1
                    node = hint
                    continue  # a fresh hint is worth trying at once
                node = ids[(ids.index(node) + 1) % len(ids)]
                await asyncio.sleep(0.05)  # nobody knows a leader yet: back off
                continue
            if kind == "unavailable":
                self.stats["unavailable"] += 1
                unavailable = resp.error.unavailable
                history.append(f"n{node}:UNAVAILABLE")
                if is_write and unavailable.outcome == errors_pb2.WRITE_OUTCOME_UNKNOWN:
                    raise WriteOutcomeUnknown(f"node {node}: {unavailable.message}")
                delay = unavailable.retry_after.ToTimedelta().total_seconds()
                await asyncio.sleep(min(max(delay, 0.02), 0.5))  # retry backoff
                continue
            raise ReplicaCallError(node, resp.error)
        raise TimeoutError(
            f"no answer within {timeout}s; attempts: {' '.join(history[-20:]) or 'none'}"
        )

    async def _one(
        self, op: replica_pb2.ReplicaOp, via: int | None, timeout: float
    ) -> replica_pb2.ReplicaOpResult:
        _node, resp = await self.send([op], via=via, timeout=timeout)
        return resp.results[0]

    async def put(
        self, key: bytes, value: bytes, *, via: int | None = None, timeout: float = 15.0
    ) -> replica_pb2.PutResult:
        return (await self._one(put_op(key, value), via, timeout)).put

    async def get(
        self, key: bytes, *, via: int | None = None, timeout: float = 15.0
    ) -> bytes | None:
        result = (await self._one(get_op(key), via, timeout)).get
        return result.kv.value if result.found else None

    async def delete(self, key: bytes, *, via: int | None = None, timeout: float = 15.0) -> bool:
        return (await self._one(delete_op(key), via, timeout)).delete.deleted

    async def cas(
        self,
        key: bytes,
        expected: bytes | None,
        new_value: bytes,
        *,
        via: int | None = None,
        timeout: float = 15.0,
    ) -> replica_pb2.CompareAndSwapResult:
        return (await self._one(cas_op(key, expected, new_value), via, timeout)).compare_and_swap

    async def scan(
        self,
        start: bytes,
        end: bytes = b"",
        limit: int = 0,
        *,
        via: int | None = None,
        timeout: float = 15.0,
    ) -> replica_pb2.ScanResult:
        return (await self._one(scan_op(start, end, limit), via, timeout)).scan

    async def get_many(
        self,
        keys: Sequence[bytes],
        *,
        via: int | None = None,
        inconsistent: bool = False,
        chunk: int = 100,
        timeout: float = 15.0,
    ) -> dict[bytes, bytes | None]:
        """Read many keys in batches of `chunk` gets (one lease check per batch).

        With `inconsistent`, `via` is read directly (no routing): that is how a
        follower's own applied state is inspected.
        """
        out: dict[bytes, bytes | None] = {}
        for i in range(0, len(keys), chunk):
            part = keys[i : i + chunk]
            ops = [get_op(k) for k in part]
            if inconsistent:
                assert via is not None, "an inconsistent read names the node to read"
                resp = await self.batch(via, ops, inconsistent=True, timeout=timeout)
                if resp.error.WhichOneof("error"):
                    raise ReplicaCallError(via, resp.error)
            else:
                _node, resp = await self.send(ops, via=via, timeout=timeout)
            for key, result in zip(part, resp.results, strict=True):
                out[key] = result.get.kv.value if result.get.found else None
        return out


#: The `raftnode_cluster` fixture's factory: `raftnode_cluster(n=3, args=[...], env={...})`.
ClusterFactory = Callable[..., RaftnodeCluster]
