"""Clients of a driver simulation: real requests to the replicas, recorded for the checker.

Each operation (GET, PUT or CAS on a small key space) is one task that calls
`RangeReplica.batch` -- the replicas' real request path: validation, lease and
read-index, write queue, raft proposal, apply -- on the node it believes holds
the lease, and follows what the replica answers as the gateway would:
NotLeaseHolder with a hint goes to the hinted node at once, without one (or a
node that is down, or a replica that is gone) to the next node one tick later;
a refusal that says nothing was applied (routing, NOT_APPLIED, overload) is
retried; a write whose fate is unknown (UNAVAILABLE with WRITE_OUTCOME_UNKNOWN)
is never retried; a key that moved to another range (a split) is asked of
that range. Every wait is bounded in simulated time: an operation that
has no answer by its deadline is given up (UNKNOWN).

Operations are recorded in a `rangekv.check.HistoryRecorder` whose clock is a
counter of recorder calls: the order in which the simulation saw invocations
and answers IS real time here, with no ties.

Anything else a replica answers (an error the request path should never
produce, or an exception instead of an answer) is kept in `unexpected`: the
runner fails the seed on it.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import random
from collections import Counter
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any

from rangekv.check import HistoryRecorder, OpHandle, OpKind
from rangekv.common import errors as E
from rangekv.v1 import replica_pb2
from testkit.driversim.world import SimWorld
from testkit.replica_client import cas_op, get_op, put_op

__all__ = ["ClientOp", "SimClients"]


@dataclass(frozen=True, slots=True)
class ClientOp:
    """One operation as drawn: its kind, key and values."""

    number: int
    kind: OpKind
    key: bytes
    value: bytes | None = None
    expected: bytes | None = None

    def describe(self) -> str:
        extra = ""
        if self.kind is OpKind.PUT:
            extra = f"={self.value!r}"
        elif self.kind is OpKind.CAS:
            extra = f" {self.expected!r}->{self.value!r}"
        return f"op{self.number} {self.kind.value} {self.key!r}{extra}"


class _Unknown(Exception):
    """The operation's fate cannot be known (a write may have been applied)."""


class SimClients:
    """Starts operations, runs them against the replicas, records their outcomes."""

    def __init__(self, world: SimWorld, keys: int, deadline_ticks: int) -> None:
        self.world = world
        self.keys = [b"k%d" % i for i in range(keys)]
        self.deadline = deadline_ticks * world.cluster.timing.tick_interval
        self._calls = itertools.count(1)
        self.recorder = HistoryRecorder(clock=lambda: float(next(self._calls)))
        self._numbers = itertools.count(1)
        self._tasks: dict[int, asyncio.Task[None]] = {}
        #: range id -> the node the clients believe holds its lease.
        self._guess: dict[int, int] = {}
        #: key -> the last value any client asked to write (what a CAS expects).
        self._last: dict[bytes, bytes] = {}
        self.outcomes: Counter[str] = Counter()
        self.unexpected: list[str] = []

    @property
    def in_flight(self) -> int:
        return len(self._tasks)

    def draw(self, rng: random.Random) -> ClientOp:
        number = next(self._numbers)
        key = rng.choice(self.keys)
        roll = rng.random()
        if roll < 0.4:
            return ClientOp(number, OpKind.GET, key)
        value = b"v%d" % number
        if roll < 0.8:
            op = ClientOp(number, OpKind.PUT, key, value)
        else:
            expected = self._last.get(key) if rng.random() < 0.7 else None
            op = ClientOp(number, OpKind.CAS, key, value, expected)
        self._last[key] = value
        return op

    def get(self, key: bytes) -> ClientOp:
        """A GET of `key` (the final reads)."""
        return ClientOp(next(self._numbers), OpKind.GET, key)

    def start(self, op: ClientOp, first_node: int) -> None:
        """Run `op` in its own task, first asking `first_node` if no guess is better."""
        range_id = self.world.range_for(op.key)
        node = self._guess.get(range_id, first_node)
        task = asyncio.get_running_loop().create_task(self._run(op, range_id, node))
        self._tasks[op.number] = task
        task.add_done_callback(functools.partial(self._finished, op.number))

    def _finished(self, number: int, _task: asyncio.Task[None]) -> None:
        self._tasks.pop(number, None)

    async def give_up_all(self) -> None:
        """Cancel every operation still running (each is recorded UNKNOWN)."""
        tasks = [self._tasks[number] for number in sorted(self._tasks)]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # --- one operation ------------------------------------------------------------------

    async def _run(self, op: ClientOp, range_id: int, node: int) -> None:
        rec = self.recorder
        handle = rec.invoke(1, op.kind, op.key, value=op.value, expected=op.expected)
        deadline = self.world.now + self.deadline
        try:
            resp = await self._call(op, range_id, node, deadline)
        except (_Unknown, asyncio.CancelledError):
            rec.unknown(handle)
            self._done(op, "unknown")
            return
        self._record(op, handle, resp)

    def _record(
        self, op: ClientOp, handle: OpHandle, resp: replica_pb2.ReplicaBatchResponse
    ) -> None:
        result = resp.results[0]
        if op.kind is OpKind.GET:
            got = result.get
            self.recorder.ok(handle, read=got.kv.value if got.found else None)
            self._done(op, f"ok read={got.kv.value if got.found else None!r}")
        elif op.kind is OpKind.PUT:
            self.recorder.ok(handle)
            self._done(op, "ok")
        else:
            swapped = result.compare_and_swap.succeeded
            self.recorder.ok(handle, succeeded=swapped)
            self._done(op, f"ok swapped={swapped}")

    def _done(self, op: ClientOp, outcome: str) -> None:
        self.outcomes[f"{op.kind.value} {outcome.split(' ')[0]}"] += 1
        self.world.log(f"{op.describe()} -> {outcome}")

    def _request(self, op: ClientOp, range_id: int) -> replica_pb2.ReplicaBatchRequest:
        if op.kind is OpKind.GET:
            ops = [get_op(op.key)]
        elif op.kind is OpKind.PUT:
            assert op.value is not None
            ops = [put_op(op.key, op.value)]
        else:
            assert op.value is not None
            ops = [cas_op(op.key, op.expected, op.value)]
        return replica_pb2.ReplicaBatchRequest(range_id=range_id, ops=ops)

    def _next_node(self, node: int) -> int:
        ids = self.world.node_ids
        return ids[(ids.index(node) + 1) % len(ids)]

    async def _call(
        self, op: ClientOp, range_id: int, node: int, deadline: float
    ) -> replica_pb2.ReplicaBatchResponse:
        """The answer of the leaseholder; raises _Unknown when none can be had."""
        clock = self.world.cluster.clock.manual
        tick = self.world.cluster.timing.tick_interval
        req = self._request(op, range_id)
        while self.world.now < deadline:
            current = self.world.range_for(op.key)  # splits move keys to new ranges
            if current != range_id:
                range_id, req = current, self._request(op, current)
            replica = self.world.replica(node, range_id)
            if replica is None:
                node = self._next_node(node)
                await clock.sleep(tick)
                continue
            resp = await self._ask(replica.batch(req), deadline)
            if not resp.HasField("error"):
                self._guess[range_id] = node
                return resp
            err = E.from_replica_error(resp.error)
            if isinstance(err, E.NotLeaseHolder):
                hint = err.leaseholder.node_id if err.leaseholder is not None else None
                if hint is not None and hint != node and hint in self.world.node_ids:
                    node = hint
                    continue
                node = self._next_node(node)
            elif isinstance(err, E.Unavailable) and err.outcome is E.WriteOutcome.UNKNOWN:
                raise _Unknown(str(err))
            elif not isinstance(err, E.RoutingError | E.Unavailable | E.ResourceExhausted):
                self.unexpected.append(f"{op.describe()} on node {node}: {err!r}")
                raise _Unknown(str(err))
            await clock.sleep(tick)
        raise _Unknown("deadline")

    async def _ask(
        self, call: Coroutine[Any, Any, replica_pb2.ReplicaBatchResponse], deadline: float
    ) -> replica_pb2.ReplicaBatchResponse:
        """Await one replica call, giving up (_Unknown) at the simulated deadline."""
        clock = self.world.cluster.clock.manual
        task = asyncio.ensure_future(call)
        timer = asyncio.ensure_future(clock.sleep(deadline - self.world.now))
        try:
            await asyncio.wait((task, timer), return_when=asyncio.FIRST_COMPLETED)
        finally:
            timer.cancel()
            if not task.done():
                task.cancel()
        if not task.done() or task.cancelled():
            raise _Unknown("deadline")
        exc = task.exception()
        if exc is not None:
            self.unexpected.append(f"replica raised {exc!r}")
            raise _Unknown(repr(exc))
        return task.result()
