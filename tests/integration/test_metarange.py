"""Real-process tests of the meta range: three `rangekv metarange` processes on loopback.

What issue 5 says the meta range must show, observed from outside like a
gateway or a split coordinator would:

* bootstrap: replicas started at once record exactly one first range, and a
  restart (graceful, or kill -9 of all of them) never records another;
* no acknowledged meta write is lost when the leader is killed (-9) in the
  middle of a stream of split transactions, and conditional writes keep
  refusing conflicts under the new leader;
* inconsistent lookups keep answering from followers while the group has no
  leader, when consistent ones cannot;
* the store registry: registration, address change, liveness expiry.

The clusters are the kit's (tests/testkit): the meta range's three replicas
only. Nothing sleeps to let something happen: waits poll an observable
condition with a deadline. A failure carries every replica's log tail and the
random seed (RANGEKV_TEST_SEED replays it).
"""

from __future__ import annotations

import asyncio
import itertools
import os
import random
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest
from testkit.cluster import META_ONLY
from testkit.fixtures import ClusterFactory
from testkit.kv import rpc_error
from testkit.meta import MetaReplicas, MetaView, commit_split, write_request
from testkit.waiting import async_wait_for

from rangekv.common import errors as E
from rangekv.common.descriptors import RangeDescriptor, first_range
from rangekv.domain.descriptor_txn import DescriptorTxn, ResolveIntent, WriteIntent, plan_split
from rangekv.domain.keys import meta_key
from rangekv.domain.txn import TxnStatus
from rangekv.metarange.client import MetaClient
from rangekv.v1 import meta_pb2

pytestmark = pytest.mark.timeout(120)

#: The first range every test cluster bootstraps (storage nodes 1, 2, 3).
FIRST = first_range((1, 2, 3))


@pytest.fixture
def rng() -> random.Random:
    """The test's randomness; its seed is printed, so a failure shows it
    (RANGEKV_TEST_SEED replays it)."""
    seed = int(os.environ.get("RANGEKV_TEST_SEED") or random.randrange(1 << 32))
    print(f"RANGEKV_TEST_SEED={seed}")
    return random.Random(seed)


def lookup_req(key: bytes, consistent: bool, prefetch: int = 8) -> meta_pb2.LookupRangeRequest:
    mode = meta_pb2.LOOKUP_MODE_CONSISTENT if consistent else meta_pb2.LOOKUP_MODE_INCONSISTENT
    return meta_pb2.LookupRangeRequest(key=key, prefetch=prefetch, mode=mode)


# ----------------------------------------------------------------------------- (a) bootstrap


async def test_bootstrap_records_one_first_range_across_restarts(
    clusters: ClusterFactory,
) -> None:
    """Three replicas started at once record exactly one first range; graceful
    and kill -9 restarts of all of them record no other (bootstrap acts only on
    an empty meta, and the id counters it advanced survive)."""
    # all three at once: each will try to bootstrap when it leads
    cluster = await clusters.start(META_ONLY)
    async with MetaReplicas(cluster) as meta:
        await meta.wait_leader()
        only_first = MetaView.of_layout([FIRST])
        await meta.wait_view(only_first, meta.ids)
        for i in meta.ids:
            info = await meta.info(i)
            assert info is not None and info.bootstrapped
            assert RangeDescriptor.from_proto(info.first_range) == FIRST
        client = meta.client()
        try:
            # Bootstrap moved the counters past the first range's ids.
            assert (await client.allocate_ids(meta_pb2.ID_KIND_RANGE, 1)).first == 2
            assert (await client.allocate_ids(meta_pb2.ID_KIND_NODE, 1)).first == 4

            await cluster.stop()  # SIGTERM all, then start all at once again
            await cluster.start()
            await meta.wait_leader()
            await meta.wait_view(only_first, meta.ids)
            assert (await client.allocate_ids(meta_pb2.ID_KIND_RANGE, 1)).first == 3

            # Once meta(b"") no longer holds the first range, a fresh start must
            # still not re-create it over the split halves.
            split = await commit_split(client, FIRST, b"m")
            halves = MetaView.of_layout(split.updates)
            await meta.wait_view(halves, meta.ids)
            await cluster.kill(*cluster.meta)
            await cluster.start()
            await meta.wait_leader()
            await meta.wait_view(halves, meta.ids)
        finally:
            await client.close()


# ----------------------------------------------------------------------------- (b) kill -9


@dataclass
class Op:
    """One meta write the coordinator sent, and what it learned of it."""

    kind: str  # "write" | "resolve"
    meta_key: bytes
    txn_id: bytes
    descriptor: RangeDescriptor | None = None
    status: TxnStatus | None = None
    outcome: str = "in flight"  # then: acked | refused | unknown
    error: E.RangeKVError | None = None

    def __str__(self) -> str:
        what = self.descriptor if self.kind == "write" else self.status
        return (
            f"{self.kind} {self.meta_key.hex()} txn {self.txn_id.hex()[:8]} {what}: {self.outcome}"
        )


def replay(ops: list[Op], include: set[int]) -> MetaView:
    """The meta records after the acknowledged ops plus the unknown ones in
    `include`, in the order they were sent (the coordinator is sequential)."""
    committed = {meta_key(b""): FIRST}
    intents: dict[bytes, tuple[bytes, RangeDescriptor]] = {}
    for n, op in enumerate(ops):
        if not (op.outcome == "acked" or (op.outcome == "unknown" and n in include)):
            continue
        if op.kind == "write":
            assert op.descriptor is not None
            intents[op.meta_key] = (op.txn_id, op.descriptor)
        else:
            held = intents.get(op.meta_key)
            if held is not None and held[0] == op.txn_id:
                if op.status is TxnStatus.COMMITTED:
                    committed[op.meta_key] = held[1]
                del intents[op.meta_key]
    return MetaView(committed, intents)


def possible_views(ops: list[Op]) -> list[MetaView]:
    """Every meta an honest replica may hold: acknowledged ops all applied,
    each unknown-outcome op applied or not."""
    unknown = [n for n, op in enumerate(ops) if op.outcome in ("unknown", "in flight")]
    assert len(unknown) <= 6, f"too many unknown outcomes to enumerate: {len(unknown)}"
    for op in ops:
        if op.outcome == "in flight":
            op.outcome = "unknown"
    views = []
    for r in range(len(unknown) + 1):
        for subset in itertools.combinations(unknown, r):
            views.append(replay(ops, set(subset)))
    return views


@dataclass
class Pending:
    txn: DescriptorTxn
    status: TxnStatus | None = None  # decided outcome; None: undecided (aborts on recovery)


@dataclass
class SplitDriver:
    """A sequential coordinator of split transactions over the meta range.

    It plays the role of the storage node that runs a split: lock intent at
    meta(C), left intent at meta(B) holding the lock, the commit decision (in
    production the transaction record on the range's raft log; here a local
    variable), then resolution, lock first. A step whose outcome is unknown
    aborts an undecided transaction; a decided one is resolved with its
    decision until acknowledged, exactly what a recovering coordinator does.
    Every op is logged with what the coordinator learned, for `possible_views`.
    """

    client: MetaClient
    rng: random.Random
    layout: list[RangeDescriptor] = field(default_factory=lambda: [FIRST])
    ops: list[Op] = field(default_factory=list)
    pending: Pending | None = None
    committed: int = 0
    aborted: int = 0
    on_send: Callable[[], None] | None = None

    async def write(self, cmd: WriteIntent) -> Op:
        op = Op("write", cmd.meta_key, cmd.txn.id, descriptor=cmd.descriptor)
        await self._send(op, self.client.write_intent(write_request(cmd)))
        return op

    async def resolve(self, cmd: ResolveIntent) -> Op:
        op = Op("resolve", cmd.meta_key, cmd.txn_id, status=cmd.status)
        await self._send(op, self.client.resolve_intent(cmd.meta_key, cmd.txn_id, cmd.status))
        return op

    async def _send(self, op: Op, call: Awaitable[Any]) -> None:
        self.ops.append(op)
        if self.on_send is not None:
            self.on_send()
        try:
            await call
        except (E.ConditionFailed, E.IntentExists) as exc:
            op.outcome, op.error = "refused", exc  # a committed no-op: certainly not applied
        except (E.Unavailable, E.DeadlineExceeded) as exc:
            op.outcome, op.error = "unknown", exc
        else:
            op.outcome = "acked"

    def _pick(self) -> tuple[RangeDescriptor, bytes]:
        while True:
            d = self.rng.choice(self.layout)
            key = b"k%05d" % self.rng.randrange(100_000)
            if d.start_key < key and (not d.end_key or key < d.end_key):
                return d, key

    async def split_once(self, stop: asyncio.Event) -> None:
        original, key = self._pick()
        try:
            right_id = (await self.client.allocate_ids(meta_pb2.ID_KIND_RANGE, 1)).first
        except (E.Unavailable, E.DeadlineExceeded):
            return  # no transaction started; a lost allocation only burns ids
        self.pending = Pending(plan_split(original, key, right_id, self.rng.randbytes(16)))
        for cmd in self.pending.txn.writes():
            if stop.is_set():
                return
            if (await self.write(cmd)).outcome != "acked":
                self.pending.status = TxnStatus.ABORTED
                break
        else:
            self.pending.status = TxnStatus.COMMITTED  # the transaction record commits here
        await self.finish(stop)

    async def finish(self, stop: asyncio.Event) -> None:
        """Resolve the pending transaction's intents with its decision (abort if
        undecided), each until acknowledged; give up quietly when `stop` is set."""
        p = self.pending
        if p is None:
            return
        if p.status is None:
            p.status = TxnStatus.ABORTED
        for cmd in p.txn.resolutions(p.status):
            while True:
                if stop.is_set():
                    return
                if (await self.resolve(cmd)).outcome == "acked":
                    break
        if p.status is TxnStatus.COMMITTED:
            self.layout.remove(p.txn.original)
            self.layout.extend(p.txn.updates)
            self.committed += 1
        else:
            self.aborted += 1
        self.pending = None

    async def run(self, stop: asyncio.Event, txns: int | None = None) -> None:
        await self.finish(stop)
        done = 0
        while not stop.is_set() and (txns is None or done < txns):
            await self.split_once(stop)
            done += 1


async def test_kill_leader_during_descriptor_transactions(
    clusters: ClusterFactory, rng: random.Random
) -> None:
    """kill -9 of the leader while a coordinator streams split transactions:
    every acknowledged intent write and resolve is in the new leader's meta
    (an op whose answer was lost may or may not be), the restarted old leader
    catches up, and conditional writes still refuse conflicts afterwards."""

    cluster = await clusters.start(META_ONLY)
    async with MetaReplicas(cluster) as meta:
        leader = await meta.wait_leader()
        await meta.wait_view(MetaView.of_layout([FIRST]), meta.ids)
        client = meta.client()
        driver = SplitDriver(client, rng)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        try:
            # Phase 1: splits until a few have committed, then kill -9 the leader
            # a random 0-4 ms after the driver sends one of its next ops.
            task = asyncio.ensure_future(driver.run(stop))
            await async_wait_for(
                lambda: driver.committed >= 4 or task.done(), 30, "4 committed splits"
            )
            assert not task.done(), task.exception()
            leader = await meta.leader() or leader  # in case leadership moved meanwhile
            target = len(driver.ops) + rng.randint(1, 6)
            killed_after: list[Op] = []

            def kill() -> None:
                cluster.meta_replica(leader).signal(signal.SIGKILL)
                stop.set()  # the driver stops after the op in flight

            def on_send() -> None:
                if len(driver.ops) == target:
                    killed_after.append(driver.ops[-1])
                    loop.call_later(rng.uniform(0, 0.004), kill)

            driver.on_send = on_send
            await asyncio.wait_for(task, 30)
            driver.on_send = None
            await cluster.reap(cluster.meta_replica(leader))
            assert killed_after, "the kill never happened"

            # Phase 2: the new leader holds every acknowledged op.
            survivors = [i for i in meta.ids if i != leader]
            new_leader = await meta.wait_leader(survivors)
            view = await meta.view(new_leader)
            candidates = possible_views(driver.ops)
            if view not in candidates:
                lost = [
                    str(op)
                    for op in driver.ops
                    if op.outcome == "acked" and not reflected(op, view)
                ]
                raise AssertionError(
                    f"meta on new leader {new_leader} matches no possible outcome "
                    f"(killed {leader} after: {killed_after[0]})\n"
                    f"acked ops not reflected: {lost}\nactual:\n{view.describe()}\n"
                    f"acked-only expectation:\n{candidates[0].describe()}"
                )
            assert not [op for op in driver.ops if op.outcome == "refused"], (
                "a sole coordinator was refused: its model of meta diverged"
            )

            # Phase 3: the old leader rejoins; the coordinator recovers its
            # interrupted transaction and goes on splitting.
            await cluster.start_children([cluster.meta_replica(leader)])
            await driver.run(asyncio.Event(), txns=4)
            await check_conflicts_refused(driver, rng)

            # Phase 4: everything settled: every replica holds exactly the layout.
            assert driver.pending is None
            settled = MetaView.of_layout(driver.layout)
            await meta.wait_view(settled, meta.ids)
            for d in driver.layout:
                got = await client.lookup_range(d.start_key, prefetch=0, consistent=True)
                assert RangeDescriptor.from_proto(got.descriptors[0]) == d
            assert driver.committed >= 5
        finally:
            stop.set()
            await client.close()


def reflected(op: Op, view: MetaView) -> bool:
    """Whether an acknowledged op's effect is visible (or superseded by the
    same key having moved on): for the failure message only."""
    if op.kind == "write":
        held = view.intents.get(op.meta_key)
        return (held is not None and held[0] == op.txn_id) or op.meta_key in view.committed
    held = view.intents.get(op.meta_key)
    return held is None or held[0] != op.txn_id


async def check_conflicts_refused(driver: SplitDriver, rng: random.Random) -> None:
    """Under the new leader, the meta range still refuses what it must:
    a lock on a stale descriptor (ConditionFailed carrying the actual one),
    a second lock on a locked range (IntentExists naming the holder), and an
    intent of a transaction whose lock was aborted away (ConditionFailed at
    the lock key). The ops go through the driver so its log stays complete."""
    current_last = next(d for d in driver.layout if not d.end_key)
    stale = plan_split(FIRST, b"k99999", 1 << 40, rng.randbytes(16))  # never written
    op = await driver.write(stale.writes()[0])
    assert op.outcome == "refused" and isinstance(op.error, E.ConditionFailed), op
    assert op.error.actual == current_last

    target, key = driver._pick()
    ids = await driver.client.allocate_ids(meta_pb2.ID_KIND_RANGE, 2)
    holder = plan_split(target, key, ids.first, rng.randbytes(16))
    rival = plan_split(target, key, ids.first + 1, rng.randbytes(16))
    assert (await driver.write(holder.writes()[0])).outcome == "acked"
    op = await driver.write(rival.writes()[0])
    assert op.outcome == "refused" and isinstance(op.error, E.IntentExists), op
    assert op.error.txn.id == holder.txn.id

    # A pusher aborts the holder; the holder's coordinator, unaware, tries its
    # second intent: the lock check refuses it.
    assert (await driver.resolve(holder.resolutions(TxnStatus.ABORTED)[0])).outcome == "acked"
    op = await driver.write(holder.writes()[1])
    assert op.outcome == "refused" and isinstance(op.error, E.ConditionFailed), op
    assert op.error.key == holder.lock_key

    # The rival now goes through, and commits.
    driver.pending = Pending(rival)
    for cmd in rival.writes():
        assert (await driver.write(cmd)).outcome == "acked"
    driver.pending.status = TxnStatus.COMMITTED
    await driver.finish(asyncio.Event())


# ----------------------------------------------------------------------------- (c) elections


async def test_inconsistent_lookups_answer_from_followers_while_electing(
    clusters: ClusterFactory, rng: random.Random
) -> None:
    """Kill -9 the leader and at once ask the surviving followers directly:
    inconsistent lookups answer with what they applied (committed descriptors
    and the pending intent, separately), consistent ones fail UNAVAILABLE until
    a new leader exists, then succeed with committed records only."""

    cluster = await clusters.start(META_ONLY)
    async with MetaReplicas(cluster) as meta:
        leader = await meta.wait_leader()
        client = meta.client()
        try:
            # Layout ["", g) [g, p) [p, "") and a pending split of [p, "") at t
            # (its lock intent at meta(b"") = [t, "")).
            first = await commit_split(client, FIRST, b"g")
            second = await commit_split(client, first.updates[0], b"p")
            tail = second.updates[0]
            pending = plan_split(tail, b"t", 99, rng.randbytes(16))
            await client.write_intent(write_request(pending.writes()[0]))

            keys = [b"", b"a", b"g", b"h", b"p", b"q", b"t", b"u", b"zzz"]
            expected = {
                k: await meta.stub(leader).LookupRange(lookup_req(k, False), timeout=2)
                for k in keys
            }
            answer = expected[b"u"]
            assert [RangeDescriptor.from_proto(d) for d in answer.descriptors] == [tail]
            assert [i.txn.id for i in answer.intents] == [pending.txn.id]
            assert RangeDescriptor.from_proto(answer.intents[0].descriptor) == pending.updates[0]
            followers = [i for i in meta.ids if i != leader]

            async def followers_applied() -> bool:
                for f in followers:
                    for k in keys:
                        got = await meta.stub(f).LookupRange(lookup_req(k, False), timeout=2)
                        if got != expected[k]:
                            return False
                return True

            await async_wait_for(followers_applied, 10, "followers to apply the layout")

            # Kill whoever leads now (leadership may have moved meanwhile).
            leader = await meta.wait_leader()
            followers = [i for i in meta.ids if i != leader]
            cluster.meta_replica(leader).signal(signal.SIGKILL)
            killed_at = time.monotonic()
            served = {f: 0 for f in followers}
            refused = {f: 0 for f in followers}
            elected_in = None
            for round_ in itertools.count():
                assert time.monotonic() - killed_at < 20, "no new leader within 20 s"
                k = keys[round_ % len(keys)]
                for f in followers:
                    stub = meta.stub(f)
                    got = await stub.LookupRange(lookup_req(k, False), timeout=2)
                    assert got == expected[k], f"follower {f} answered {got} for {k!r}"
                    served[f] += 1
                    err = await rpc_error(stub.LookupRange(lookup_req(k, True), timeout=2))
                    if err is None:
                        elected_in = time.monotonic() - killed_at
                        break
                    assert err.code() == grpc.StatusCode.UNAVAILABLE, err
                    assert isinstance(E.from_rpc_error(err), E.Unavailable)
                    refused[f] += 1
                if elected_in is not None:
                    break
                await asyncio.sleep(0.02)  # pacing of the probe loop, not synchronisation
            assert all(n >= 1 for n in served.values()), served
            assert sum(refused.values()) >= 1, "consistent lookups never failed: no election gap"
            await cluster.reap(cluster.meta_replica(leader))

            # With a leader again, consistent lookups through the client see
            # committed records only; the pending intent survived the failover.
            got = await client.lookup_range(b"u", prefetch=0, consistent=True)
            assert [RangeDescriptor.from_proto(d) for d in got.descriptors] == [tail]
            assert not got.intents
            got = await client.lookup_range(b"u", prefetch=0, consistent=False)
            assert [i.txn.id for i in got.intents] == [pending.txn.id]
            # ... and, when asked, the leader's consistent read returns the intent too
            # (what a gateway re-reads after a descriptor proved wrong).
            got = await client.lookup_range(b"u", prefetch=0, consistent=True, include_intents=True)
            assert [RangeDescriptor.from_proto(d) for d in got.descriptors] == [tail]
            assert [i.txn.id for i in got.intents] == [pending.txn.id]
        finally:
            await client.close()


# ----------------------------------------------------------------------------- (d) registry


async def test_store_registry_heartbeats_addresses_and_liveness(
    clusters: ClusterFactory,
) -> None:
    """A heartbeat registers a node, a heartbeat from a new address moves it,
    and liveness lapses one TTL after the last heartbeat (judged by the reading
    replica's clock, on every replica) until the next heartbeat renews it."""

    cluster = await clusters.start(META_ONLY, meta_args=("--liveness-ttl", "1"))
    async with MetaReplicas(cluster) as meta:
        await meta.wait_leader()
        client = meta.client()

        async def nodes(replica: int) -> dict[int, meta_pb2.NodeStatus]:
            resp = await meta.stub(replica).ListNodes(meta_pb2.ListNodesRequest(), timeout=2)
            return {s.node.node_id: s for s in resp.nodes}

        async def wait_all(
            pred: Callable[[dict[int, meta_pb2.NodeStatus]], bool], what: str
        ) -> None:
            async def everywhere() -> bool:
                return all([pred(await nodes(i)) for i in meta.ids])

            await async_wait_for(everywhere, 10, what)

        try:
            resp = await client.heartbeat(7, "127.0.0.1:7007")
            assert resp.liveness_ttl.ToNanoseconds() == 1_000_000_000
            await wait_all(
                lambda ns: 7 in ns and ns[7].node.address == "127.0.0.1:7007", "node 7 registered"
            )
            first_beat = (await nodes(meta.ids[0]))[7].last_heartbeat_wall_time

            # The node restarted elsewhere: the next heartbeat moves it.
            await client.heartbeat(7, "127.0.0.1:7107")
            await client.heartbeat(8, "127.0.0.1:7008")
            await wait_all(
                lambda ns: (
                    sorted(ns) == [7, 8]
                    and ns[7].node.address == "127.0.0.1:7107"
                    and ns[7].last_heartbeat_wall_time > first_beat
                ),
                "node 7's new address and node 8",
            )

            # No more heartbeats from 7: every replica sees it die after the TTL.
            await client.heartbeat(7, "127.0.0.1:7107")
            await wait_all(lambda ns: not ns[7].live, "node 7 to lose liveness")
            last = (await nodes(meta.ids[0]))[7].last_heartbeat_wall_time
            assert time.time_ns() - last >= 1_000_000_000, "liveness lapsed before the TTL"

            await client.heartbeat(7, "127.0.0.1:7107")
            states = {i: (await nodes(i))[7] for i in meta.ids}
            leader = await meta.leader()
            assert leader is not None and states[leader].live  # the leader applied it
            await wait_all(lambda ns: ns[7].last_heartbeat_wall_time > last, "renewal applied")
        finally:
            await client.close()
