"""Throughput and latency of a 3-node loopback raftnode group (run by hand, not in CI).

    python benchmarks/raftnode_bench.py [--seconds 5] [--clients 1,16,64] [--value-size 128]

Starts three `rangekv raftnode` processes in a temp dir (the test kit's
cluster, tests/testkit, raftnodes only) and measures, with closed-loop clients
each issuing unary `Batch` calls of ONE op to the leaseholder over grpc.aio:

  * put/s and get/s at 1, 16 and 64 concurrent clients: median of the
    per-second rates, p50/p99 latency;
  * fsyncs per committed entry on the leader during the put cells
    (rangekv_raft_log_syncs_total / rangekv_raft_entries_persisted_total),
    and entries per put, which show group commit and proposal batching;
  * lease reads vs read-index reads (gets/s ratio);
  * nosync vs sync puts/s (a second, fresh cluster with --fsm-sync-mode nosync).

How read-index is forced: there is no switch to disable leases (the derived
lease is always longer than a heartbeat interval, so a steady leader always
holds one). The benchmark kills one caught-up follower and asks the leader to
transfer its lease to it: while that transfer is pending (one election
timeout) the leader has no lease and serves every consistent read by
read-index, with the remaining follower as its quorum. The sync cluster runs
with an election timeout long enough for the read-index cells (so its first
election takes that long too); afterwards the transfer is abandoned and the
leader, whose TIMEOUT_NOW left, ends its term and leads the next with a lease
again. The lease-read cell is measured in the same 2-live-node topology just
before, so the ratio compares like with like. The counters
rangekv_lease_read_total{outcome} confirm which
path each cell took.

The clients run in this process and share the machine's cores with the three
nodes; on a small machine the figures are a floor, not a ceiling.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import random
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from closed_loop import Cell, closed_loop, progress
from testkit.cluster import NODES_ONLY, Cluster, running_cluster
from testkit.metrics import metric_value
from testkit.replica_client import RANGE_ID, ReplicaClient, get_op, put_op
from testkit.waiting import async_wait_for

from rangekv.v1 import replica_pb2


async def batch_cell(
    client: ReplicaClient,
    node: int,
    make_op: Callable[[int, int], replica_pb2.ReplicaOp],
    clients: int,
    seconds: float,
    label: str,
) -> Cell:
    """`clients` closed loops of one-op Batch calls to `node` (see closed_loop.py)."""
    stub = client.stub(node)

    async def call(c: int, i: int) -> bool:
        req = replica_pb2.ReplicaBatchRequest(range_id=RANGE_ID, ops=[make_op(c, i)])
        resp = await stub.Batch(req, timeout=10)
        return not resp.HasField("error")

    cell = await closed_loop(call, clients, seconds, label)
    progress(
        f"{label:<28} c={clients:<3} {cell.rate:8.0f} ops/s  "
        f"p50 {cell.pct(0.5):6.2f} ms  p99 {cell.pct(0.99):6.2f} ms  errors {cell.errors}"
    )
    return cell


async def leader_counters(cluster: Cluster, node: int) -> dict[str, float]:
    text = await cluster.metrics(cluster.node(node))
    out = {
        "syncs": metric_value(text, "rangekv_raft_log_syncs_total"),
        "entries": metric_value(text, "rangekv_raft_entries_persisted_total"),
    }
    for outcome in ("hit", "readindex", "not_leader"):
        out[outcome] = metric_value(text, "rangekv_lease_read_total", outcome=outcome)
    return out


async def put_cells(
    cluster: Cluster,
    client: ReplicaClient,
    leader: int,
    clients: Sequence[int],
    seconds: float,
    value: bytes,
    label: str,
) -> list[Cell]:
    cells = []
    followers = [n for n in cluster.running_node_ids() if n != leader]
    for c in clients:
        before = {n: await leader_counters(cluster, n) for n in (leader, *followers)}
        cell = await batch_cell(
            client,
            leader,
            lambda w, i: put_op(b"p/%d/%d" % (w, i % 1000), value),
            c,
            seconds,
            label,
        )
        after = {n: await leader_counters(cluster, n) for n in (leader, *followers)}

        def delta(name: str, nodes: Sequence[int], a: dict = after, b: dict = before) -> float:
            return sum(a[n][name] - b[n][name] for n in nodes)

        entries, syncs = delta("entries", [leader]), delta("syncs", [leader])
        f_entries, f_syncs = delta("entries", followers), delta("syncs", followers)
        nan = float("nan")
        cell.extra["fsyncs_per_entry"] = syncs / entries if entries else nan
        cell.extra["follower_fsyncs_per_entry"] = f_syncs / f_entries if f_entries else nan
        cell.extra["fsyncs_per_put"] = syncs / cell.extra["calls"] if cell.extra["calls"] else nan
        cells.append(cell)
    return cells


async def benchmark(args: argparse.Namespace, base: Path) -> None:
    clients = [int(c) for c in args.clients.split(",")]
    value = os.urandom(args.value_size)
    keys = [b"g/%05d" % i for i in range(1000)]
    rng = random.Random(1)

    def get_any(_w: int, _i: int) -> replica_pb2.ReplicaOp:
        return get_op(keys[rng.randrange(len(keys))])

    # --- sync cluster: put/get table, fsyncs per entry, lease vs read-index ----------
    # The read-index cells run while a lease transfer to a dead node is pending:
    # one election timeout must outlast them (see the module docstring).
    ri_clients = [c for c in (1, 16) if c in clients] or clients[:1]
    election_ticks = max(30, math.ceil(args.seconds * len(ri_clients) / 0.1) + 50)
    progress(
        f"starting 3-node cluster (fsm sync mode: sync; election timeout {election_ticks} "
        "ticks, so the first election takes a while)"
    )
    sync = replace(
        NODES_ONLY,
        node_args=("--fsm-sync-mode", "sync", "--election-ticks", str(election_ticks)),
    )
    async with (
        running_cluster(base / "sync", sync, say=progress) as cluster,
        ReplicaClient.of(cluster) as client,
    ):
        leader = await client.leaseholder()
        progress(f"leaseholder: node {leader}; preloading {len(keys)} keys")
        for i in range(0, len(keys), 100):
            await client.send([put_op(k, value) for k in keys[i : i + 100]], via=leader)
        puts = await put_cells(cluster, client, leader, clients, args.seconds, value, "put (sync)")
        gets = []
        for c in clients:
            gets.append(await batch_cell(client, leader, get_any, c, args.seconds, "get (lease)"))

        progress("forcing read-index: kill a follower, transfer the lease to it")
        victim = next(n for n in cluster.node_ids if n != leader)
        info = await client.range_info(leader)
        assert info is not None

        async def caught_up() -> bool:
            v = await client.range_info(victim)
            return v is not None and v.applied_index >= info.commit_index

        await async_wait_for(caught_up, 30, "the follower to catch up")
        await cluster.kill(cluster.node(victim))
        lease2: list[Cell] = []
        for c in ri_clients:
            lease2.append(
                await batch_cell(client, leader, get_any, c, args.seconds, "get (lease, 2 live)")
            )
        request = replica_pb2.TransferLeaseRequest(range_id=RANGE_ID, target_node_id=victim)
        transfer = asyncio.ensure_future(client.stub(leader).TransferLease(request, timeout=30))

        async def lease_gone() -> bool:
            i = await client.range_info(leader)
            return i is not None and i.is_leader and not i.lease_valid

        await async_wait_for(lease_gone, 10, "the leader to lose its lease")
        before = await leader_counters(cluster, leader)
        readindex: list[Cell] = []
        for c in ri_clients:
            readindex.append(
                await batch_cell(client, leader, get_any, c, args.seconds, "get (read-index)")
            )
        after = await leader_counters(cluster, leader)
        transfer.cancel()
        with contextlib.suppress(BaseException):
            await transfer
        ri_share = (after["readindex"] - before["readindex"]) / max(
            1.0,
            (after["readindex"] - before["readindex"]) + (after["hit"] - before["hit"]),
        )
        still = await client.range_info(leader)
        assert still is not None and still.is_leader and not still.lease_valid

    # --- nosync cluster: puts only ---------------------------------------------------
    nosync: list[Cell] = []
    if not args.skip_nosync:
        progress("starting a fresh 3-node cluster (fsm sync mode: nosync)")
        nosync_spec = replace(NODES_ONLY, node_args=("--fsm-sync-mode", "nosync"))
        async with (
            running_cluster(base / "nosync", nosync_spec, say=progress) as cluster,
            ReplicaClient.of(cluster) as client,
        ):
            leader = await client.leaseholder()
            nosync = await put_cells(
                cluster, client, leader, clients, args.seconds, value, "put (nosync)"
            )

    # --- report ---------------------------------------------------------------------
    print()
    print(
        f"rangekv raftnode benchmark: 3 nodes on loopback, {os.cpu_count()} cores, "
        f"one op per Batch call, {args.value_size}-byte values, {args.seconds:.0f}s per cell"
    )
    print()
    head = (
        f"{'clients':>7} | {'put/s':>7} {'p50 ms':>7} {'p99 ms':>7} | "
        f"{'get/s':>7} {'p50 ms':>7} {'p99 ms':>7} | "
        f"{'fsync/entry':>11} {'(followers)':>11} {'fsync/put':>9}"
    )
    print(head)
    print("-" * len(head))
    for p, g in zip(puts, gets, strict=True):
        print(
            f"{p.clients:>7} | {p.rate:>7.0f} {p.pct(0.5):>7.2f} {p.pct(0.99):>7.2f} | "
            f"{g.rate:>7.0f} {g.pct(0.5):>7.2f} {g.pct(0.99):>7.2f} | "
            f"{p.extra['fsyncs_per_entry']:>11.3f} {p.extra['follower_fsyncs_per_entry']:>11.3f} "
            f"{p.extra['fsyncs_per_put']:>9.3f}"
        )
    print(
        "fsync/entry: raft-log syncs / entries persisted on the leader (followers: both summed);"
        "\nfsync/put: leader raft-log syncs per put issued (proposals merged into one entry)."
    )
    print()
    print("lease reads vs read-index reads (leader + 1 live follower):")
    for lc, rc in zip(lease2, readindex, strict=True):
        print(
            f"  c={lc.clients:<3} lease {lc.rate:8.0f} gets/s (p50 {lc.pct(0.5):.2f} ms)  "
            f"read-index {rc.rate:8.0f} gets/s (p50 {rc.pct(0.5):.2f} ms)  "
            f"ratio {lc.rate / rc.rate if rc.rate else float('nan'):.2f}x"
        )
    print(f"  share of read-index checks during the read-index cells: {ri_share:.1%}")
    if nosync:
        print()
        print("nosync vs sync puts/s (each on a fresh cluster):")
        for s, n in zip(puts, nosync, strict=True):
            print(
                f"  c={s.clients:<3} sync {s.rate:8.0f}  nosync {n.rate:8.0f}  "
                f"ratio {n.rate / s.rate if s.rate else float('nan'):.2f}x  "
                f"(nosync fsync/entry {n.extra['fsyncs_per_entry']:.3f})"
            )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="measured seconds per cell")
    parser.add_argument("--clients", default="1,16,64", help="concurrency levels")
    parser.add_argument("--value-size", type=int, default=128, help="bytes per put value")
    parser.add_argument("--skip-nosync", action="store_true", help="skip the nosync cluster")
    parser.add_argument("--dir", type=Path, default=None, help="data dir (default: a temp dir)")
    args = parser.parse_args()
    if args.dir is not None:
        args.dir.mkdir(parents=True, exist_ok=True)
        asyncio.run(benchmark(args, args.dir))
    else:
        with tempfile.TemporaryDirectory(prefix="rangekv-bench-") as tmp:
            asyncio.run(benchmark(args, Path(tmp)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
