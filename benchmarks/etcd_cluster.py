"""A 3-member etcd on loopback for benchmarks/compare_etcd.py, and its KV calls.

etcd comes from Debian's `etcd-server` package (3.4 on bookworm): found on PATH,
else installed with apt-get when this process may (root, apt-get present, and
the caller allows it). The members run with etcd's defaults (fsync on every
raft write), plaintext, each on its own client and peer port, data in a folder
given by the caller, logs next to it.

The calls are etcd's public gRPC API (etcdserverpb.KV/Put and /Range, and
Maintenance/Status to find the leader). Their messages are declared here at
run time from their field numbers, a handful of fields each, so the benchmark
needs no generated code and no .proto file of etcd's.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from rangekv.cli.cluster import free_ports

F = descriptor_pb2.FieldDescriptorProto

#: name -> [(field, number, type, repeated, message type)] of the etcd messages used.
_MESSAGES: dict[str, list[tuple[str, int, int, bool, str]]] = {
    "ResponseHeader": [
        ("cluster_id", 1, F.TYPE_UINT64, False, ""),
        ("member_id", 2, F.TYPE_UINT64, False, ""),
        ("revision", 3, F.TYPE_INT64, False, ""),
        ("raft_term", 4, F.TYPE_UINT64, False, ""),
    ],
    "KeyValue": [
        ("key", 1, F.TYPE_BYTES, False, ""),
        ("create_revision", 2, F.TYPE_INT64, False, ""),
        ("mod_revision", 3, F.TYPE_INT64, False, ""),
        ("version", 4, F.TYPE_INT64, False, ""),
        ("value", 5, F.TYPE_BYTES, False, ""),
        ("lease", 6, F.TYPE_INT64, False, ""),
    ],
    "PutRequest": [("key", 1, F.TYPE_BYTES, False, ""), ("value", 2, F.TYPE_BYTES, False, "")],
    "PutResponse": [("header", 1, F.TYPE_MESSAGE, False, "ResponseHeader")],
    "RangeRequest": [
        ("key", 1, F.TYPE_BYTES, False, ""),
        ("range_end", 2, F.TYPE_BYTES, False, ""),
        ("limit", 3, F.TYPE_INT64, False, ""),
        # false (the default): a linearizable read.
        ("serializable", 7, F.TYPE_BOOL, False, ""),
    ],
    "RangeResponse": [
        ("header", 1, F.TYPE_MESSAGE, False, "ResponseHeader"),
        ("kvs", 2, F.TYPE_MESSAGE, True, "KeyValue"),
        ("more", 3, F.TYPE_BOOL, False, ""),
        ("count", 4, F.TYPE_INT64, False, ""),
    ],
    "StatusRequest": [],
    "StatusResponse": [
        ("header", 1, F.TYPE_MESSAGE, False, "ResponseHeader"),
        ("version", 2, F.TYPE_STRING, False, ""),
        ("leader", 4, F.TYPE_UINT64, False, ""),
    ],
}


def _message_classes() -> dict[str, Any]:
    fdp = descriptor_pb2.FileDescriptorProto(
        name="compare_etcd/etcdserverpb.proto", package="etcdserverpb", syntax="proto3"
    )
    for name, fields in _MESSAGES.items():
        msg = fdp.message_type.add(name=name)
        for field, number, kind, repeated, type_name in fields:
            f = msg.field.add(name=field, number=number, type=kind)  # type: ignore[arg-type]
            f.label = F.LABEL_REPEATED if repeated else F.LABEL_OPTIONAL
            if type_name:
                f.type_name = f".etcdserverpb.{type_name}"
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fdp)
    return {
        name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"etcdserverpb.{name}"))
        for name in _MESSAGES
    }


M = _message_classes()


def find_etcd(install: bool, say: Callable[[str], None]) -> tuple[str | None, str]:
    """The etcd binary (installing Debian's etcd-server if allowed), or None and why not."""
    found = shutil.which("etcd")
    if found:
        return found, ""
    apt = shutil.which("apt-get")
    if not install:
        return None, "etcd is not installed and --no-install was given"
    if apt is None:
        return None, "etcd is not installed and there is no apt-get to install it with"
    if os.geteuid() != 0:
        return None, "etcd is not installed and installing it needs root (apt-get)"
    for step in (
        [apt, "install", "-y", "--no-install-recommends", "etcd-server"],
        [apt, "update"],
        [apt, "install", "-y", "--no-install-recommends", "etcd-server"],
    ):
        say(f"etcd: running {' '.join(step)}")
        done = subprocess.run(
            step,
            capture_output=True,
            text=True,
            env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
        )
        if step[1] == "install" and done.returncode == 0:
            break
    found = shutil.which("etcd")
    if found:
        return found, ""
    return None, "installing Debian's etcd-server with apt-get failed"


class EtcdCluster:
    """Three etcd members on loopback (see the module docstring)."""

    def __init__(self, binary: str, base: Path, say: Callable[[str], None]) -> None:
        self.binary = binary
        self.base = base
        self.say = say
        ports = free_ports(6)
        self.client_ports = ports[:3]
        self.peer_ports = ports[3:]
        self.procs: list[subprocess.Popen[bytes]] = []

    @property
    def client_addresses(self) -> list[str]:
        return [f"127.0.0.1:{p}" for p in self.client_ports]

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def start(self) -> None:
        cluster = ",".join(f"m{i + 1}=http://127.0.0.1:{p}" for i, p in enumerate(self.peer_ports))
        self.base.mkdir(parents=True, exist_ok=True)
        for i in range(3):
            name = f"m{i + 1}"
            log = (self.base / f"{name}.log").open("ab")
            client = f"http://127.0.0.1:{self.client_ports[i]}"
            peer = f"http://127.0.0.1:{self.peer_ports[i]}"
            cmd = [
                self.binary,
                "--name", name,
                "--data-dir", str(self.base / name),
                "--listen-client-urls", client,
                "--advertise-client-urls", client,
                "--listen-peer-urls", peer,
                "--initial-advertise-peer-urls", peer,
                "--initial-cluster", cluster,
                "--initial-cluster-state", "new",
                "--initial-cluster-token", "rangekv-compare",
                "--logger", "zap",
                "--log-outputs", "stderr",
            ]  # fmt: skip
            self.procs.append(subprocess.Popen(cmd, stdout=log, stderr=log, start_new_session=True))
            log.close()

    async def leader(self, timeout: float = 60.0) -> str:
        """The client address of the leader, once every member answers and one leads."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        last = ""
        while loop.time() < deadline:
            for proc in self.procs:
                if proc.poll() is not None:
                    raise RuntimeError(f"etcd exited ({proc.returncode}); see {self.base}/*.log")
            try:
                statuses = [await self._status(a) for a in self.client_addresses]
            except grpc.aio.AioRpcError as exc:
                last = f"{exc.code().name}: {exc.details()}"
            else:
                for address, status in zip(self.client_addresses, statuses, strict=True):
                    if status.leader and status.header.member_id == status.leader:
                        return address
                last = "no leader yet"
            await asyncio.sleep(0.2)  # polling etcd until it elects a leader
        raise TimeoutError(f"etcd did not elect a leader in {timeout:.0f}s ({last})")

    async def _status(self, address: str) -> Any:
        async with grpc.aio.insecure_channel(address) as ch:
            call = ch.unary_unary(
                "/etcdserverpb.Maintenance/Status",
                request_serializer=lambda m: m.SerializeToString(),
                response_deserializer=M["StatusResponse"].FromString,
            )
            return await call(M["StatusRequest"](), timeout=2)

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


class EtcdOps:
    """The benchmark's operations on etcd: Put, and a linearizable Range of one key."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        serialize = lambda m: m.SerializeToString()  # noqa: E731
        self._put = channel.unary_unary(
            "/etcdserverpb.KV/Put",
            request_serializer=serialize,
            response_deserializer=M["PutResponse"].FromString,
        )
        self._range = channel.unary_unary(
            "/etcdserverpb.KV/Range",
            request_serializer=serialize,
            response_deserializer=M["RangeResponse"].FromString,
        )

    async def get(self, key: bytes, timeout: float) -> None:
        await self._range(M["RangeRequest"](key=key), timeout=timeout)

    async def put(self, key: bytes, value: bytes, timeout: float) -> None:
        await self._put(M["PutRequest"](key=key, value=value), timeout=timeout)

    async def put_many(self, keys: Sequence[bytes], value: bytes, timeout: float) -> None:
        await asyncio.gather(*(self.put(k, value, timeout) for k in keys))


__all__ = ["EtcdCluster", "EtcdOps", "M", "find_etcd"]
