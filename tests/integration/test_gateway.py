"""Real-process tests of the gateway (DistSender): what issue 6 says it must show.

A `LocalCluster` runs 3 metarange replicas, 3 raftnodes and 2 gateways on
loopback; the tests talk to the gateways only through the public
`rangekv.v1.KV` API, like any client would, and to the raftnodes only to move
the lease (`TransferLease`) and to see who holds it (`RangeInfo`).

* `test_kv_api_basics`: every KV call through a gateway, scans that page
  through many keys, and INVALID_ARGUMENT for bad input with nothing written.
* `test_lease_moves_and_node_restart`: clients read, write, swap and delete a
  few keys through BOTH gateways while the lease moves several times and a
  raftnode is killed with SIGKILL and restarted. Every operation is recorded
  (ok / fail / unknown) and the history must be linearizable: that is what
  "every acknowledged write is visible" means once writes of unknown outcome
  exist. Scans run all along and must never return a key twice or out of
  order, nor miss one of the keys that are never deleted.

Every test is synchronous at the pytest level and runs its async body with
`asyncio.run`, because grpc.aio channels belong to one event loop. Waits for
cluster state poll with deadlines (`async_wait_for`); the only plain sleeps
pace the workload and decide how long each phase of the nemesis lasts.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
import signal
import time
import urllib.request
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
from raftnode_cluster import async_wait_for, free_ports, metric_value

from rangekv.check import HistoryRecorder, Operation, OpKind, Outcome, check_history, save_history
from rangekv.check.kv_client import recorded_op
from rangekv.cli.cluster import Child, LocalCluster
from rangekv.v1 import kv_pb2, kv_pb2_grpc, replica_pb2, replica_pb2_grpc

pytestmark = pytest.mark.timeout(240)

RANGE_ID = 1  # the first range covers the whole keyspace until splits land
CLIENT_TIMEOUT = 15.0  # above the gateway's own request timeout (10 s), so it answers first


# ----------------------------------------------------------------------------- harness


def run(body: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(_run(body))


async def _run(body: Callable[[], Awaitable[None]]) -> None:
    await body()


def log_tails(cluster: LocalCluster, lines: int = 30) -> str:
    """The end of every child's log: the only way to debug a failure in another process."""
    parts = []
    for child in cluster.children:
        try:
            text = child.log_path.read_text(errors="replace").splitlines()[-lines:]
        except OSError as exc:
            text = [f"<no log: {exc}>"]
        parts.append(f"----- {child.name} ({child.log_path}) -----\n" + "\n".join(text))
    return "\n".join(parts)


@contextlib.asynccontextmanager
async def running_cluster(base: Path, n_gateways: int = 2) -> AsyncIterator[LocalCluster]:
    """A started cluster that is stopped whatever happens; logs are printed on failure
    (pytest shows a failing test's stdout)."""
    cluster = LocalCluster(base, gateway_ports=free_ports(n_gateways), say=lambda _line: None)
    try:
        await cluster.start()
        yield cluster
    except BaseException:
        print(log_tails(cluster))
        raise
    finally:
        await cluster.stop()


@contextlib.asynccontextmanager
async def kv_stubs(cluster: LocalCluster) -> AsyncIterator[list[kv_pb2_grpc.KVStub]]:
    channels = [cluster.client_channels()(g.address) for g in cluster.gateways]
    try:
        yield [kv_pb2_grpc.KVStub(ch) for ch in channels]
    finally:
        for ch in channels:
            await ch.close()


def node_ids(cluster: LocalCluster) -> list[int]:
    return list(cluster.layout.nodes)


def node_child(cluster: LocalCluster, node_id: int) -> Child:
    return cluster.nodes[node_ids(cluster).index(node_id)]


async def range_info(cluster: LocalCluster, address: str) -> replica_pb2.ReplicaInfo | None:
    """This node's view of range 1, or None when it does not answer.

    A fresh channel per call: a long-lived channel to a node that was killed
    would sit in gRPC's reconnect backoff after the node came back.
    """
    try:
        async with cluster.node_channels()(address) as ch:
            resp = await replica_pb2_grpc.ReplicaStub(ch).RangeInfo(
                replica_pb2.RangeInfoRequest(range_ids=[RANGE_ID]), timeout=2.0
            )
    except grpc.aio.AioRpcError:
        return None
    return resp.replicas[0] if resp.replicas else None


async def leaseholder(cluster: LocalCluster, exclude: int | None = None) -> int | None:
    """The node that holds a valid lease on range 1 (None if nobody does right now)."""
    for nid, child in zip(node_ids(cluster), cluster.nodes, strict=True):
        if nid == exclude or child.proc is None or child.proc.returncode is not None:
            continue
        info = await range_info(cluster, child.address)
        if info is not None and info.is_leader and info.lease_valid:
            return nid
    return None


async def transfer_lease(cluster: LocalCluster, target: int, timeout: float = 20.0) -> None:
    """Move range 1's lease to `target` and wait until `target` holds a valid lease.

    The current holder may change under us (elections), so each attempt asks
    whoever holds the lease now; a refusal is retried until the deadline.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    last = "no attempt"
    while loop.time() < deadline:
        holder = await leaseholder(cluster)
        if holder == target:
            return
        if holder is not None:
            child = node_child(cluster, holder)
            try:
                async with cluster.node_channels()(child.address) as ch:
                    resp = await replica_pb2_grpc.ReplicaStub(ch).TransferLease(
                        replica_pb2.TransferLeaseRequest(range_id=RANGE_ID, target_node_id=target),
                        timeout=5.0,
                    )
                last = str(resp.error) if resp.HasField("error") else "ok"
            except grpc.aio.AioRpcError as exc:
                last = f"{exc.code().name}: {exc.details()}"
        info = await range_info(cluster, node_child(cluster, target).address)
        if info is not None and info.is_leader and info.lease_valid:
            return
        await asyncio.sleep(0.1)  # polling interval of a condition with a deadline
    raise TimeoutError(f"lease did not move to node {target} within {timeout}s (last: {last})")


def fetch_metrics(address: str) -> str:
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=5) as resp:
        return str(resp.read().decode())


async def scan_keys(
    kv: kv_pb2_grpc.KVStub, start: bytes = b"", end: bytes = b"", limit: int = 0
) -> list[tuple[bytes, bytes]]:
    """One Scan call, all its chunks concatenated."""
    out: list[tuple[bytes, bytes]] = []
    call = kv.Scan(
        kv_pb2.ScanRequest(start_key=start, end_key=end, limit=limit), timeout=CLIENT_TIMEOUT
    )
    async for resp in call:
        out.extend((kv_.key, kv_.value) for kv_ in resp.kvs)
    return out


async def paged_scan(
    kv: kv_pb2_grpc.KVStub, start: bytes, end: bytes, page: int, into: list[bytes]
) -> None:
    """Page through [start, end) with Scan(limit=page), appending keys to `into` as they
    arrive (so a caller that sees an error can still check what came before it)."""
    cursor = start
    while True:
        kvs = await scan_keys(kv, cursor, end, page)
        into.extend(k for k, _ in kvs)
        if len(kvs) < page:
            return
        cursor = kvs[-1][0] + b"\x00"


def assert_strictly_ordered(keys: list[bytes], what: str) -> None:
    for a, b in itertools.pairwise(keys):
        assert a < b, f"{what}: {b!r} after {a!r} (a key twice or out of order)"


# ----------------------------------------------------------------------------- basics


def test_kv_api_basics(tmp_path: Path) -> None:
    """Every call of the public API through a gateway, as the proto documents it."""

    async def body() -> None:
        async with running_cluster(tmp_path / "cluster") as cluster, kv_stubs(cluster) as stubs:
            kv, kv2 = stubs
            t = CLIENT_TIMEOUT

            # put / get, seen through the other gateway too
            put = await kv.Put(kv_pb2.PutRequest(key=b"a", value=b"1"), timeout=t)
            assert put.version.wall_time > 0
            got = await kv2.Get(kv_pb2.GetRequest(key=b"a"), timeout=t)
            assert got.found and got.kv.key == b"a" and got.kv.value == b"1"
            assert not (await kv.Get(kv_pb2.GetRequest(key=b"missing"), timeout=t)).found

            # delete: true once, then false; gone for both gateways
            assert (await kv.Delete(kv_pb2.DeleteRequest(key=b"a"), timeout=t)).deleted
            assert not (await kv2.Delete(kv_pb2.DeleteRequest(key=b"a"), timeout=t)).deleted
            assert not (await kv2.Get(kv_pb2.GetRequest(key=b"a"), timeout=t)).found

            # compare-and-swap: absent / wrong value / right value / present-but-expected-absent
            cas = kv_pb2.CompareAndSwapRequest
            r = await kv.CompareAndSwap(
                cas(key=b"c", expect_absent=True, new_value=b"x"), timeout=t
            )
            assert r.succeeded and r.current.value == b"x"
            r = await kv.CompareAndSwap(
                cas(key=b"c", expected_value=b"y", new_value=b"z"), timeout=t
            )
            assert not r.succeeded and r.current.value == b"x"
            r = await kv2.CompareAndSwap(
                cas(key=b"c", expected_value=b"x", new_value=b"z"), timeout=t
            )
            assert r.succeeded
            r = await kv.CompareAndSwap(
                cas(key=b"c", expect_absent=True, new_value=b"w"), timeout=t
            )
            assert not r.succeeded and r.current.value == b"z"
            r = await kv.CompareAndSwap(cas(key=b"nope", expected_value=b"x", new_value=b"w"))
            assert not r.succeeded and not r.HasField("current")
            assert not (await kv.Get(kv_pb2.GetRequest(key=b"nope"), timeout=t)).found

            # batch: responses in request order; the ops run concurrently (the batch is
            # not a transaction), so each one touches its own key
            await kv.Put(kv_pb2.PutRequest(key=b"d", value=b"4"), timeout=t)
            item = kv_pb2.BatchRequestItem
            batch = await kv.Batch(
                kv_pb2.BatchRequest(
                    requests=[
                        item(put=kv_pb2.PutRequest(key=b"b1", value=b"v1")),
                        item(get=kv_pb2.GetRequest(key=b"c")),
                        item(delete=kv_pb2.DeleteRequest(key=b"d")),
                        item(compare_and_swap=cas(key=b"b2", expect_absent=True, new_value=b"v2")),
                        item(get=kv_pb2.GetRequest(key=b"absent")),
                    ]
                ),
                timeout=t,
            )
            kinds = [r.WhichOneof("response") for r in batch.responses]
            assert kinds == ["put", "get", "delete", "compare_and_swap", "get"]
            assert batch.responses[1].get.kv.value == b"z"
            assert batch.responses[2].delete.deleted
            assert batch.responses[3].compare_and_swap.succeeded
            assert not batch.responses[4].get.found
            assert (await kv2.Get(kv_pb2.GetRequest(key=b"b2"), timeout=t)).kv.value == b"v2"

            # scans over many keys: whole, limited, paged, bounded, through both gateways
            keys = [b"scan/%04d" % i for i in range(300)]
            for chunk in range(0, len(keys), 100):
                await kv.Batch(
                    kv_pb2.BatchRequest(
                        requests=[
                            item(put=kv_pb2.PutRequest(key=k, value=k[::-1]))
                            for k in keys[chunk : chunk + 100]
                        ]
                    ),
                    timeout=t,
                )
            whole = await scan_keys(kv2, b"scan/", b"scan0")
            assert [k for k, _ in whole] == keys
            assert all(v == k[::-1] for k, v in whole)
            limited = await scan_keys(kv, b"scan/", b"scan0", limit=120)
            assert [k for k, _ in limited] == keys[:120]
            paged: list[bytes] = []
            await paged_scan(kv2, b"scan/", b"scan0", 37, paged)
            assert paged == keys
            middle = await scan_keys(kv, b"scan/0100", b"scan/0200")
            assert [k for k, _ in middle] == keys[100:200]
            everything = [k for k, _ in await scan_keys(kv)]
            assert_strictly_ordered(everything, "scan of the whole keyspace")
            assert set(keys) | {b"b1", b"b2"} <= set(everything)
            assert b"d" not in everything and b"a" not in everything

            # invalid input: INVALID_ARGUMENT, and nothing written
            too_big = b"x" * ((1 << 20) + 1)
            bad_calls: list[tuple[str, Awaitable[object]]] = [
                ("put empty key", kv.Put(kv_pb2.PutRequest(key=b"", value=b"v"), timeout=t)),
                ("get empty key", kv.Get(kv_pb2.GetRequest(key=b""), timeout=t)),
                ("delete empty key", kv.Delete(kv_pb2.DeleteRequest(key=b""), timeout=t)),
                (
                    "put oversized value",
                    kv.Put(kv_pb2.PutRequest(key=b"big", value=too_big), timeout=t),
                ),
                (
                    "cas oversized value",
                    kv.CompareAndSwap(
                        cas(key=b"big", expect_absent=True, new_value=too_big), timeout=t
                    ),
                ),
                (
                    "batch with one bad op",
                    kv.Batch(
                        kv_pb2.BatchRequest(
                            requests=[
                                item(put=kv_pb2.PutRequest(key=b"good", value=b"v")),
                                item(put=kv_pb2.PutRequest(key=b"", value=b"v")),
                            ]
                        ),
                        timeout=t,
                    ),
                ),
                ("scan end before start", scan_keys(kv, b"z", b"a")),
                ("scan negative limit", scan_keys(kv, b"a", b"z", limit=-1)),
            ]
            for what, call in bad_calls:
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await call
                assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, what
            for key in (b"big", b"good"):
                got = await kv2.Get(kv_pb2.GetRequest(key=key), timeout=t)
                assert not got.found, f"{key!r} was written by a refused request"

    run(body)


# ----------------------------------------------------------------------------- chaos

REG_KEYS = [b"reg/%d" % i for i in range(4)]  # read/written/swapped/deleted by the clients
SCAN_KEYS = [b"s/%03d" % i for i in range(150)]  # written once, never deleted
N_CLIENTS = 6
N_SCANNERS = 2


@dataclass
class Stats:
    """What the workload saw, for the assertions and the summary line."""

    outcomes: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    scans_ok: int = 0
    scan_errors: Counter[str] = field(default_factory=Counter)
    phases: dict[str, float] = field(default_factory=dict)
    scan_failures: list[str] = field(default_factory=list)
    messages: Counter[str] = field(default_factory=Counter)


async def one_op(
    cid: int,
    kv: kv_pb2_grpc.KVStub,
    rec: HistoryRecorder,
    stats: Stats,
    kind: OpKind,
    key: bytes,
    value: bytes | None = None,
    expected: bytes | None = None,
) -> Operation:
    """Send one operation, record it with the outcome the client can know."""
    op, err = await recorded_op(cid, kv, rec, kind, key, value, expected, timeout=CLIENT_TIMEOUT)
    if err is not None:
        stats.errors[f"{kind.value} {err.code().name}"] += 1
        stats.messages[f"{err.code().name}: {(err.details() or '')[:150]}"] += 1
    stats.outcomes[op.outcome.value] += 1
    return op


async def client(
    cid: int,
    stubs: list[kv_pb2_grpc.KVStub],
    rec: HistoryRecorder,
    stats: Stats,
    stop: asyncio.Event,
) -> None:
    """Random gets, puts, swaps and deletes over REG_KEYS through a random gateway.

    Written values are unique, so reads pin the order down; a CAS expects the
    last value this client saw for the key, so many of them succeed.
    """
    rng = random.Random(cid)
    seen: dict[bytes, bytes | None] = {}
    n = 0
    while not stop.is_set():
        n += 1
        kv = rng.choice(stubs)
        key = rng.choice(REG_KEYS)
        roll = rng.random()
        value = b"c%d-%d" % (cid, n)
        if roll < 0.4:
            op = await one_op(cid, kv, rec, stats, OpKind.GET, key)
            if op.outcome is Outcome.OK:
                seen[key] = op.read
        elif roll < 0.7:
            op = await one_op(cid, kv, rec, stats, OpKind.PUT, key, value)
            if op.outcome is Outcome.OK:
                seen[key] = value
        elif roll < 0.9:
            op = await one_op(cid, kv, rec, stats, OpKind.CAS, key, value, seen.get(key))
            if op.outcome is Outcome.OK:
                seen[key] = value if op.succeeded else op.read
        else:
            op = await one_op(cid, kv, rec, stats, OpKind.DELETE, key)
            if op.outcome is Outcome.OK:
                seen[key] = None
        await asyncio.sleep(rng.uniform(0.0, 0.02))  # pacing: leave CPU for the cluster


async def scanner(
    sid: int, stubs: list[kv_pb2_grpc.KVStub], stats: Stats, stop: asyncio.Event
) -> None:
    """Whole-keyspace scans (one call, or paged) while everything else happens.

    Whatever a scan returns before it succeeds or fails must be strictly
    ordered; a complete one must hold every never-deleted key exactly once.
    """
    rng = random.Random(1000 + sid)
    while not stop.is_set():
        kv = rng.choice(stubs)
        page = rng.choice([0, 0, 29])
        keys: list[bytes] = []
        try:
            if page:
                await paged_scan(kv, b"", b"", page, keys)
            else:
                keys = [k for k, _ in await scan_keys(kv)]
        except grpc.aio.AioRpcError as err:
            stats.scan_errors[err.code().name] += 1
            complete = False
        else:
            complete = True
        what = f"scanner {sid} (page {page or 'none'})"
        try:
            assert_strictly_ordered(keys, what)
            if complete:
                got = [k for k in keys if k.startswith(b"s/")]
                assert got == SCAN_KEYS, f"{what}: {len(got)} of {len(SCAN_KEYS)} scan keys"
                stats.scans_ok += 1
        except AssertionError as exc:
            stats.scan_failures.append(str(exc))
        await asyncio.sleep(rng.uniform(0.05, 0.15))  # pacing


async def nemesis(cluster: LocalCluster, stats: Stats) -> None:
    """Three lease transfers, SIGKILL of the leaseholder, restart, lease back to it.

    The sleeps between steps are how long the workload runs in each state;
    every wait for the cluster itself polls with a deadline.
    """
    loop = asyncio.get_running_loop()
    ids = node_ids(cluster)
    await asyncio.sleep(2.0)
    for _ in range(3):
        holder = await async_wait_for(lambda: leaseholder(cluster), 20, "a leaseholder")
        target = ids[(ids.index(holder) + 1) % len(ids)]
        await transfer_lease(cluster, target)
        stats.phases[f"lease->{target}"] = loop.time()
        await asyncio.sleep(1.5)

    victim = await async_wait_for(lambda: leaseholder(cluster), 20, "a leaseholder")
    child = cluster.nodes[ids.index(victim)]
    assert child.proc is not None
    child.signal(signal.SIGKILL)
    await child.proc.wait()
    stats.phases[f"kill -9 node {victim}"] = loop.time()
    await async_wait_for(
        lambda: leaseholder(cluster, exclude=victim), 30, "a new leaseholder after the kill"
    )
    await asyncio.sleep(1.5)
    await child.start()
    stats.phases[f"restart node {victim}"] = loop.time()

    async def caught_up() -> bool:
        holder = await leaseholder(cluster)
        if holder is None:
            return False
        lead = await range_info(cluster, cluster.nodes[ids.index(holder)].address)
        mine = await range_info(cluster, child.address)
        return lead is not None and mine is not None and mine.applied_index >= lead.commit_index

    await async_wait_for(caught_up, 30, f"node {victim} to catch up after its restart")
    await transfer_lease(cluster, victim)
    stats.phases[f"lease->{victim} (restarted)"] = loop.time()
    await asyncio.sleep(2.0)


def possible_final_values(ops: list[Operation], key: bytes) -> set[bytes | None]:
    """Values a key may hold once every operation on it has finished.

    The last write in the linearization is one that no acknowledged effective
    write is known to follow (no OK effective write invoked after it
    completed); writes of unknown outcome may or may not have applied. A
    necessary condition, independent of the checker, and readable in a failure.
    """

    def effect(op: Operation) -> bytes | None:
        return None if op.kind is OpKind.DELETE else op.value

    writes = [
        o
        for o in ops
        if o.key == key
        and o.kind is not OpKind.GET
        and o.outcome is not Outcome.FAIL
        and (o.outcome is Outcome.UNKNOWN or o.succeeded)
    ]
    acked = [o for o in writes if o.outcome is Outcome.OK]
    out = {effect(w) for w in writes if not any(a.invoke > w.complete for a in acked)}
    if not acked:
        out.add(None)
    return out


RETRY_REASONS = ("unavailable", "no_address", "range_key_mismatch", "range_not_found")


async def gateway_counters(cluster: LocalCluster) -> dict[str, int]:
    """Redirects, retries by reason and meta lookups, summed over the gateways."""
    totals: Counter[str] = Counter()
    for gw in cluster.gateways:
        text = await asyncio.to_thread(fetch_metrics, gw.metrics)
        totals["redirects"] += int(metric_value(text, "rangekv_gateway_redirects"))
        for reason in RETRY_REASONS:
            totals[f"retries:{reason}"] += int(
                metric_value(text, "rangekv_gateway_retries", reason=reason)
            )
        totals["meta_lookups"] += int(metric_value(text, "rangekv_gateway_meta_lookups_total"))
    return dict(totals)


def test_lease_moves_and_node_restart(tmp_path: Path) -> None:
    """Issue 6: through two gateways, while leases move and a raftnode is killed -9 and
    restarted, clients see every acknowledged write and scans never see a key twice."""

    async def body() -> None:
        started = time.monotonic()
        rec = HistoryRecorder()
        stats = Stats()
        async with running_cluster(tmp_path / "cluster") as cluster, kv_stubs(cluster) as stubs:
            item = kv_pb2.BatchRequestItem
            await stubs[0].Batch(
                kv_pb2.BatchRequest(
                    requests=[item(put=kv_pb2.PutRequest(key=k, value=b"s")) for k in SCAN_KEYS]
                ),
                timeout=CLIENT_TIMEOUT,
            )

            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            stats.phases["workload"] = loop.time()
            workers = [
                *(
                    asyncio.create_task(client(c, stubs, rec, stats, stop))
                    for c in range(N_CLIENTS)
                ),
                *(asyncio.create_task(scanner(s, stubs, stats, stop)) for s in range(N_SCANNERS)),
            ]
            try:
                await nemesis(cluster, stats)
            finally:
                stop.set()
                await asyncio.gather(*workers)
            restart_at = next(t for k, t in stats.phases.items() if k.startswith("restart"))

            # Final reads of every key through both gateways (recorded too, so the
            # checker judges them), and one last scan through each.
            final: dict[tuple[int, bytes], bytes | None] = {}
            for g, kv in enumerate(stubs):
                for key in REG_KEYS:

                    async def read_ok(
                        g: int = g, kv: kv_pb2_grpc.KVStub = kv, key: bytes = key
                    ) -> Operation | None:
                        op = await one_op(100 + g, kv, rec, stats, OpKind.GET, key)
                        return op if op.outcome is Outcome.OK else None

                    op = await async_wait_for(read_ok, 30, f"a final read of {key!r}", 0.2)
                    final[(g, key)] = op.read
            final_scans = [await scan_keys(kv) for kv in stubs]
            counters = await gateway_counters(cluster)

        ops = rec.operations()
        history_file = tmp_path / "history.json"
        save_history(history_file, ops)
        acked_after_restart = sum(
            1 for o in ops if o.outcome is Outcome.OK and o.invoke > restart_at and o.client < 100
        )
        t0 = stats.phases["workload"]
        phases = {k: round(v - t0, 1) for k, v in stats.phases.items()}
        summary = (
            f"{len(ops)} ops {dict(stats.outcomes)}; errors {dict(stats.errors)}; "
            f"scans ok {stats.scans_ok}, failed {dict(stats.scan_errors)}; "
            f"acked after the restart {acked_after_restart}; gateways {counters}; "
            f"{time.monotonic() - started:.1f}s; history in {history_file}; "
            f"nemesis at {phases}; commonest errors {stats.messages.most_common(3)}"
        )
        print(summary)

        assert not stats.scan_failures, stats.scan_failures[:5]
        for key in REG_KEYS:
            # Not "equal to the final read": a write of unknown outcome may still
            # apply between the two, and the history allows that.
            allowed = possible_final_values(ops, key)
            for g, kvs in enumerate(final_scans):
                assert final[(g, key)] in allowed, (
                    f"{key!r} reads {final[(g, key)]!r} through gateway {g + 1}; "
                    f"the history allows only {allowed!r}"
                )
                scanned = dict(kvs).get(key)
                assert scanned in allowed, (
                    f"the final scan through gateway {g + 1} has {key!r}={scanned!r}; "
                    f"the history allows only {allowed!r}"
                )
        for g, kvs in enumerate(final_scans):
            keys = [k for k, _ in kvs]
            assert_strictly_ordered(keys, f"final scan through gateway {g + 1}")
            assert [k for k in keys if k.startswith(b"s/")] == SCAN_KEYS

        result = check_history(ops, timeout=60)
        assert result.ok is True, f"{result.explanation}\n{summary}"

        assert stats.outcomes["OK"] >= 200, summary
        assert acked_after_restart >= 10, f"no progress after the restart: {summary}"
        assert stats.scans_ok >= 5, summary
        assert counters["redirects"] > 0, f"no NotLeaseHolder was followed: {summary}"
        assert not any("INTERNAL" in e or "UNKNOWN" in e for e in stats.errors), summary

    run(body)
