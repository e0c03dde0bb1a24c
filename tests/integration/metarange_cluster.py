"""A harness for real-process metarange clusters on loopback (tests and benchmarks).

Three `rangekv metarange` processes form the meta range's raft group, exactly
as an operator runs them: flag parsing, RocksDB on disk, raft over gRPC,
signals. Processes are `rangekv.cli.cluster.Child`ren (what `rangekv dev`
runs), so the harness and the dev cluster agree on how a replica is started
and when it is ready (its one ready line). Like `raftnode_cluster.py` it is
free of pytest so `benchmarks/metarange_bench.py` can use it too.

Everything here is asyncio: grpc.aio channels and asyncio subprocesses
belong to one event loop, so a cluster lives and dies inside one
`asyncio.run`. `kill_all_now` is the synchronous safety net a fixture calls
when that loop is already gone.

Synchronisation is by observable condition only: a replica is up when it
logged its ready line, a leader exists when a replica says it leads, a
replica has caught up when its local listing equals the expected one. Every
wait polls with a deadline (`raftnode_cluster.async_wait_for`).

Also here: the conversion of protocol commands (`rangekv.metarange.protocol`
builds `WriteIntent` / `ResolveIntent`) into wire requests, and a
replica's local view of the meta records (`MetaView`), which is what the
tests compare with their models.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import os
import signal
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from raftnode_cluster import async_wait_for, free_ports

from rangekv.cli.cluster import Child
from rangekv.common import errors as E
from rangekv.common.certs import ensure_dev_certs
from rangekv.common.config import SecurityConfig
from rangekv.common.descriptors import RangeDescriptor
from rangekv.common.tls import node_channels
from rangekv.domain.descriptor_txn import DescriptorTxn, ResolveIntent, WriteIntent, plan_split
from rangekv.domain.keys import meta_key
from rangekv.domain.txn import TxnStatus
from rangekv.metarange.client import MetaClient
from rangekv.v1 import meta_pb2, meta_pb2_grpc

__all__ = [
    "MetaCluster",
    "MetaView",
    "commit_split",
    "resolve_request",
    "write_request",
]

#: Per-call deadline of the harness's direct calls to one replica.
CALL_TIMEOUT = 2.0


# ----------------------------------------------------------------------------- wire helpers


def write_request(cmd: WriteIntent) -> meta_pb2.WriteIntentRequest:
    """The wire form of a protocol `WriteIntent` (expected XOR expect_absent, lock key)."""
    req = meta_pb2.WriteIntentRequest(
        txn=cmd.txn.to_proto(),
        descriptor=cmd.descriptor.to_proto(),
        expect_absent=cmd.expect_absent,
        lock_key=cmd.lock_key or b"",
    )
    if cmd.expected is not None:
        req.expected.CopyFrom(cmd.expected.to_proto())
    return req


def resolve_request(cmd: ResolveIntent) -> meta_pb2.ResolveIntentRequest:
    return meta_pb2.ResolveIntentRequest(
        meta_key=cmd.meta_key,
        txn_id=cmd.txn_id,
        status=int(cmd.status),  # type: ignore[arg-type]
    )


@dataclass(frozen=True)
class MetaView:
    """The meta records one replica holds: committed descriptors and intents by meta key."""

    committed: dict[bytes, RangeDescriptor] = field(default_factory=dict)
    intents: dict[bytes, tuple[bytes, RangeDescriptor]] = field(default_factory=dict)

    @staticmethod
    def from_listing(resp: meta_pb2.ListRangesResponse) -> MetaView:
        committed = {}
        for pb in resp.descriptors:
            d = RangeDescriptor.from_proto(pb)
            committed[meta_key(d.end_key)] = d
        intents = {
            i.meta_key: (i.txn.id, RangeDescriptor.from_proto(i.descriptor)) for i in resp.intents
        }
        return MetaView(committed, intents)

    @staticmethod
    def of_layout(layout: Iterable[RangeDescriptor]) -> MetaView:
        """A settled meta: one committed record per range, no intents."""
        return MetaView({meta_key(d.end_key): d for d in layout}, {})

    def describe(self) -> str:
        lines = [f"  committed {mk.hex()}: {d}" for mk, d in sorted(self.committed.items())]
        lines += [
            f"  intent    {mk.hex()}: txn {t.hex()[:8]} {d}"
            for mk, (t, d) in sorted(self.intents.items())
        ]
        return "\n".join(lines) or "  (empty)"


async def commit_split(client: MetaClient, original: RangeDescriptor, key: bytes) -> DescriptorTxn:
    """Run one split of `original` at `key` to completion (lock, left intent,
    commit, resolve) through `client`; for setting up layouts, so any error raises."""
    alloc = await client.allocate_ids(meta_pb2.ID_KIND_RANGE, 1)
    txn = plan_split(original, key, alloc.first, os.urandom(16))
    for w in txn.writes():
        await client.write_intent(write_request(w))
    for r in txn.resolutions(TxnStatus.COMMITTED):
        await client.resolve_intent(r.meta_key, r.txn_id, int(r.status))
    return txn


# ----------------------------------------------------------------------------- the cluster


class MetaCluster:
    """`n` metarange replicas (node ids 1..n) under `base_dir`, on fixed loopback ports.

    Ports are chosen once so that a restarted replica comes back at the address
    its peers (and `--peers`) know; every incarnation appends to the same log.
    """

    def __init__(
        self,
        base_dir: Path,
        n: int = 3,
        *,
        args: Sequence[str] = (),
        first_range_nodes: Sequence[int] = (1, 2, 3),
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.base_dir = base_dir
        self.certs_dir = base_dir / "certs"
        ensure_dev_certs(self.certs_dir, datetime.datetime.now(datetime.UTC))
        self.channels = node_channels(SecurityConfig(certs_dir=self.certs_dir))
        self.ports = dict(zip(range(1, n + 1), free_ports(n), strict=True))
        peers = ",".join(f"{i}=127.0.0.1:{p}" for i, p in self.ports.items())
        self.children: dict[int, Child] = {
            i: Child(
                f"metarange {i}",
                [
                    "metarange",
                    "--node-id",
                    str(i),
                    "--listen-port",
                    str(port),
                    "--metrics-port",
                    "0",
                    "--data-dir",
                    str(base_dir / f"m{i}"),
                    "--peers",
                    peers,
                    "--first-range-nodes",
                    ",".join(map(str, first_range_nodes)),
                    "--certs-dir",
                    str(self.certs_dir),
                    *args,
                ],
                base_dir / "logs" / f"metarange{i}.log",
                dict(env or {}),
            )
            for i, port in self.ports.items()
        }
        self._channels: dict[int, grpc.aio.Channel] = {}

    # --- processes --------------------------------------------------------------------

    @property
    def ids(self) -> list[int]:
        return sorted(self.children)

    def address(self, node_id: int) -> str:
        return f"127.0.0.1:{self.ports[node_id]}"

    @property
    def addresses(self) -> list[str]:
        return [self.address(i) for i in self.ids]

    def running(self, node_id: int) -> bool:
        proc = self.children[node_id].proc
        return proc is not None and proc.returncode is None

    @property
    def running_ids(self) -> list[int]:
        return [i for i in self.ids if self.running(i)]

    async def start(self, node_ids: Iterable[int] | None = None, timeout: float = 30.0) -> None:
        """Start replicas all at once and wait for each one's ready line."""
        ids = self.ids if node_ids is None else list(node_ids)
        await asyncio.gather(*(self.children[i].start(timeout) for i in ids))

    def kill_now(self, node_id: int) -> None:
        """SIGKILL, synchronously: callable from a callback at an exact moment."""
        self.children[node_id].signal(signal.SIGKILL)

    async def kill(self, node_id: int) -> None:
        """kill -9 and reap."""
        self.kill_now(node_id)
        await self.reap(node_id)

    async def reap(self, node_id: int) -> None:
        child = self.children[node_id]
        if child.proc is not None:
            await child.proc.wait()
        if child._pump_task is not None:
            with contextlib.suppress(Exception):
                await child._pump_task

    async def stop(self, node_ids: Iterable[int] | None = None) -> None:
        """SIGTERM (graceful), in parallel."""
        ids = self.ids if node_ids is None else list(node_ids)
        await asyncio.gather(*(self.children[i].stop() for i in ids))
        for i in ids:
            await self.reap(i)

    async def close(self) -> None:
        """Close channels and kill -9 whatever still runs (test teardown)."""
        for ch in self._channels.values():
            await ch.close()
        self._channels.clear()
        for i in self.running_ids:
            await self.kill(i)

    def kill_all_now(self) -> None:
        """Synchronous last resort for a fixture finalizer (the loop may be gone)."""
        for child in self.children.values():
            proc = child.proc
            if proc is not None and proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGKILL)

    def log_tails(self, lines: int = 30) -> str:
        out = []
        for _node_id, child in sorted(self.children.items()):
            try:
                text = child.log_path.read_text(errors="replace").splitlines()[-lines:]
            except FileNotFoundError:
                text = ["(no log)"]
            out.append(f"--- {child.name} ({child.log_path}) ---")
            out.extend(text)
        return "\n".join(out)

    # --- talking to replicas ----------------------------------------------------------

    def stub(self, node_id: int) -> meta_pb2_grpc.MetaStub:
        """A stub bound to ONE replica (no leader following): for per-replica checks."""
        ch = self._channels.get(node_id)
        if ch is None:
            ch = self.channels(self.address(node_id))
            self._channels[node_id] = ch
        return meta_pb2_grpc.MetaStub(ch)

    def client(self, timeout: float = 5.0) -> MetaClient:
        return MetaClient(self.addresses, timeout=timeout, channels=self.channels)

    async def info(self, node_id: int) -> meta_pb2.ClusterInfoResponse | None:
        """ClusterInfo from one replica, or None if it does not answer."""
        try:
            return await self.stub(node_id).ClusterInfo(
                meta_pb2.ClusterInfoRequest(), timeout=CALL_TIMEOUT
            )
        except grpc.aio.AioRpcError:
            return None

    async def leader(self, among: Iterable[int] | None = None) -> int | None:
        """A running replica that says it leads, if any."""
        for i in among if among is not None else self.running_ids:
            info = await self.info(i)
            if info is not None and info.leader_node_id == i:
                return i
        return None

    async def wait_leader(self, among: Iterable[int] | None = None, timeout: float = 20.0) -> int:
        """Poll until a replica leads AND serves a consistent read (its term's
        entry is committed and applied, so earlier acknowledged writes are visible)."""
        ids = list(among) if among is not None else None

        async def ready_leader() -> int | None:
            lead = await self.leader(ids)
            if lead is None:
                return None
            try:
                await self.stub(lead).LookupRange(
                    meta_pb2.LookupRangeRequest(key=b"", mode=meta_pb2.LOOKUP_MODE_CONSISTENT),
                    timeout=CALL_TIMEOUT,
                )
            except grpc.aio.AioRpcError:
                return None
            return lead

        lead = await async_wait_for(ready_leader, timeout, "a meta leader serving consistent reads")
        return int(lead)

    async def view(self, node_id: int) -> MetaView:
        """Replica `node_id`'s applied meta records (ListRanges with intents is a
        local read on any replica, leader or not)."""
        resp = await self.stub(node_id).ListRanges(
            meta_pb2.ListRangesRequest(include_intents=True), timeout=CALL_TIMEOUT
        )
        return MetaView.from_listing(resp)

    async def wait_view(
        self, expected: MetaView, node_ids: Iterable[int] | None = None, timeout: float = 20.0
    ) -> None:
        """Wait until every replica in `node_ids` (default: running) holds `expected`."""
        ids = list(node_ids) if node_ids is not None else self.running_ids
        last: dict[int, MetaView | str] = {}

        async def converged() -> bool:
            for i in ids:
                try:
                    last[i] = await self.view(i)
                except grpc.aio.AioRpcError as exc:
                    last[i] = f"error {E.from_rpc_error(exc)}"
            return all(last[i] == expected for i in ids)

        try:
            await async_wait_for(converged, timeout, f"replicas {ids} to hold the expected meta")
        except TimeoutError as exc:
            detail = "\n".join(
                f" replica {i}:\n{v.describe() if isinstance(v, MetaView) else v}"
                for i, v in last.items()
            )
            raise AssertionError(f"{exc}\n expected:\n{expected.describe()}\n{detail}") from None
