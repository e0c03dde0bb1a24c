"""`rangekv dev`: a complete local cluster on loopback, in one command.

3 metarange replicas, 3 raftnodes and 1 gateway (counts configurable) as
separate processes, data under --data (default ./data/dev). It waits until the
cluster answers a write and a read, prints where everything is, restarts a
child that dies, and stops everything on Ctrl-C. Started again on the same
folder, it resumes with all data.

Secure by default: a CA, a node certificate and an ``admin`` client certificate
are made under DATA/certs on first start (reused after); every link is mutual
TLS and the CLI finds the certificates from --data by itself. ``--insecure``
(env RANGEKV_INSECURE=1) runs today's plaintext cluster and says so loudly.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import socket
import sys
from collections.abc import Sequence
from pathlib import Path

import grpc

from rangekv.cli.cluster import LocalCluster
from rangekv.common.certs import CA_CERT, client_files
from rangekv.common.config import parse_bool
from rangekv.common.tls import INSECURE_WARNING, ChannelOpener, PlaintextChannels
from rangekv.v1 import kv_pb2, kv_pb2_grpc


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


async def wait_until_serving(
    address: str, channels: ChannelOpener | None = None, timeout: float = 90.0
) -> None:
    """Until a Put and a Get through the gateway succeed (the whole path is up)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    last = ""
    opener = channels if channels is not None else PlaintextChannels()
    async with opener(address) as channel:
        stub = kv_pb2_grpc.KVStub(channel)
        while loop.time() < deadline:
            try:
                await stub.Put(
                    kv_pb2.PutRequest(key=b"\x00rangekv-dev-probe", value=b"ok"), timeout=5
                )
                await stub.Get(kv_pb2.GetRequest(key=b"\x00rangekv-dev-probe"), timeout=5)
                # Leave nothing behind in the user's keyspace.
                await stub.Delete(kv_pb2.DeleteRequest(key=b"\x00rangekv-dev-probe"), timeout=5)
                return
            except grpc.aio.AioRpcError as exc:
                last = f"{exc.code().name}: {exc.details()}"
                await asyncio.sleep(0.25)  # polling the cluster until it answers
    raise TimeoutError(f"the cluster did not answer within {timeout:.0f}s ({last})")


def grpcurl_flags(cluster: LocalCluster) -> str:
    """How grpcurl reaches this cluster: -plaintext, or the CA and the admin client pair."""
    if cluster.certs_dir is None:
        return "-plaintext"
    d = cluster.certs_dir
    crt, key = client_files("admin")
    return f"-cacert {d / CA_CERT} -cert {d / crt} -key {d / key}"


def screen(cluster: LocalCluster, data_flag: str = "") -> str:
    gw = cluster.gateways[0].address
    flags = grpcurl_flags(cluster)
    lines = ["", f"rangekv dev cluster is up (data: {cluster.data})", ""]
    if cluster.certs_dir is None:
        lines += [f"  !!! {INSECURE_WARNING} !!!", ""]
    else:
        lines += [
            f"  mutual TLS on every link; certificates in {cluster.certs_dir}",
            "  (the rangekv CLI finds them from --data; client.admin has the admin role)",
            "",
        ]
    for child in cluster.children:
        metrics = f"metrics http://{child.metrics}/metrics" if child.metrics else ""
        lines.append(f"  {child.name:<12} {child.address:<22} {metrics}")
    lines += [
        "",
        "Try:",
        f"  rangekv put hello world --addr {gw}{data_flag}",
        f"  rangekv get hello --addr {gw}{data_flag}",
        f"  rangekv ranges --addr {gw}{data_flag}        (and nodes, split, transfer-lease, ...)",
        f"  rangekv bench --addr {gw}{data_flag} --duration 10 --plot bench.png",
        f"  grpcurl {flags} {gw} list",
        f'  grpcurl {flags} -d \'{{"key": "aGVsbG8=", "value": "d29ybGQ="}}\' {gw} rangekv.v1.KV/Put',
        f'  grpcurl {flags} -d \'{{"key": "aGVsbG8="}}\' {gw} rangekv.v1.KV/Get',
        "",
        "Every raftnode serves the KV API on its own address too: a request sent to the",
        "node holding its range's lease skips the gateway hop (see `rangekv ranges`).",
        "",
        f"Logs: {cluster.data / 'logs'}    Stop: Ctrl-C",
        "",
    ]
    return "\n".join(lines)


async def run(args: argparse.Namespace, data: Path, default_data: bool) -> int:
    """Run the cluster in `data` (resolved by the caller: no file system call
    blocks the event loop here) until Ctrl-C; `default_data`: it is ./data/dev."""
    if not _port_free(args.port):
        print(f"rangekv dev: port {args.port} is in use; pick another with --port", file=sys.stderr)
        return 1

    def say(msg: str) -> None:
        print(msg, flush=True)

    if args.insecure:
        for _ in range(3):
            say(f"rangekv dev: {INSECURE_WARNING}")
    cluster = LocalCluster(
        data,
        n_meta=args.metaranges,
        n_nodes=args.nodes,
        gateway_ports=[args.port],
        say=say,
        insecure=args.insecure,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    say(
        f"rangekv dev: starting {args.metaranges} metarange, {args.nodes} raftnode, 1 gateway in {data}"
    )
    try:
        await cluster.start()
        say("rangekv dev: waiting for the cluster to answer...")
        await wait_until_serving(cluster.gateways[0].address, cluster.client_channels())
    except (TimeoutError, RuntimeError) as exc:
        say(f"rangekv dev: {exc}")
        await cluster.stop()
        return 1
    say(screen(cluster, "" if default_data or cluster.certs_dir is None else f" --data {data}"))
    cluster.watch()
    await stop.wait()
    say("rangekv dev: stopping...")
    await cluster.stop()
    say("rangekv dev: stopped")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="rangekv dev", description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="./data/dev", help="data folder (default ./data/dev)")
    parser.add_argument("--port", type=int, default=50051, help="gateway port (default 50051)")
    parser.add_argument("--metaranges", type=int, default=3, help="metarange replicas (default 3)")
    parser.add_argument("--nodes", type=int, default=3, help="storage nodes (default 3)")
    parser.add_argument(
        "--insecure",
        action=argparse.BooleanOptionalAction,
        default=parse_bool(os.environ.get("RANGEKV_INSECURE", "0") or "0"),
        help="plaintext, no certificates, no authentication [env RANGEKV_INSECURE]",
    )
    args = parser.parse_args(argv)
    if args.metaranges < 1 or args.nodes < 1:
        parser.error("--metaranges and --nodes must be at least 1")
    data = Path(args.data).resolve()
    default_data = Path("./data/dev").resolve() == data
    with contextlib.suppress(KeyboardInterrupt):
        return asyncio.run(run(args, data, default_data))
    return 130
