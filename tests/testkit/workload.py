"""The recorded random-client workload: what the gateway, split and chaos tests run.

Clients read, write, swap and delete a few register keys through a random
gateway each time; every operation is recorded in one `HistoryRecorder` with
the outcome a client can know (`rangekv.check.kv_client`), so the history can
be judged by `check_history`. Written values are unique (`c<client>-<n>`), so
reads pin the order down; a CAS expects the last value its client saw, so
many of them succeed.

Scanners run beside them: structural scanners scan the whole keyspace (one
call or paged) and check that what comes back is strictly ordered and that a
complete scan holds every key written once and never deleted; snapshot
scanners scan a span of register keys and record each scan as a SCAN
operation, which the checker judges as a read of the span at one instant.

Everything is seeded (`seed`): the same seed draws the same choices.
"""

from __future__ import annotations

import asyncio
import itertools
import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import grpc

from rangekv.check import HistoryRecorder, Operation, OpKind, Outcome
from rangekv.check.kv_client import recorded_op, recorded_scan
from rangekv.v1 import kv_pb2_grpc
from testkit.kv import CLIENT_TIMEOUT, load, ordering_problem, paged_scan, scan_rows

__all__ = [
    "ClientMix",
    "RecordedKV",
    "Workload",
    "WorkloadSpec",
    "WorkloadStats",
    "possible_final_values",
]


@dataclass(frozen=True)
class ClientMix:
    """What a random client does: its shares of GET, PUT and CAS (the rest are
    DELETEs), and the pause after each operation (leaves CPU for the cluster)."""

    get: float = 0.4
    put: float = 0.3
    cas: float = 0.2
    pause: tuple[float, float] = (0.0, 0.02)


@dataclass(frozen=True)
class WorkloadSpec:
    """The clients and scanners of one run."""

    #: Register keys: read, written, swapped and deleted by the clients.
    keys: tuple[bytes, ...]
    #: Keys written once before the run (`Workload.load`) and never deleted: a
    #: complete scan must hold every one of them.
    never_deleted: tuple[bytes, ...] = ()
    #: The prefix of the never-deleted keys, which no client writes under: a
    #: complete scan's keys under it must be exactly `never_deleted`.
    never_deleted_prefix: bytes = b"s/"
    clients: int = 6
    scanners: int = 2
    mix: ClientMix = ClientMix()
    #: Page sizes a structural scanner picks from (0: one call for everything).
    scan_pages: tuple[int, ...] = (0, 0, 29)
    scan_pause: tuple[float, float] = (0.05, 0.15)
    #: Scanners of `snapshot_span` whose scans go into the history.
    snapshot_scanners: int = 0
    snapshot_span: tuple[bytes, bytes] = (b"", b"")
    seed: int = 0


@dataclass
class WorkloadStats:
    """What the workload saw, for assertions and reports."""

    outcomes: Counter[str] = field(default_factory=Counter)
    #: "KIND OUTCOME" -> count.
    by_kind: Counter[str] = field(default_factory=Counter)
    #: "KIND CODE" (or "direct KIND ERROR") -> count.
    errors: Counter[str] = field(default_factory=Counter)
    #: "CODE: details" -> count (the commonest say why operations failed).
    messages: Counter[str] = field(default_factory=Counter)
    scans_ok: int = 0
    scans_partial: int = 0
    scan_errors: Counter[str] = field(default_factory=Counter)
    scan_failures: list[str] = field(default_factory=list)
    snapshot_scans: int = 0
    #: Acknowledged operations by KV endpoint (1-based position among the stubs).
    acknowledged_at: Counter[int] = field(default_factory=Counter)

    def count(self, op: Operation) -> None:
        self.outcomes[op.outcome.value] += 1
        self.by_kind[f"{op.kind.value} {op.outcome.value}"] += 1

    @property
    def acknowledged(self) -> int:
        return self.outcomes[Outcome.OK.value]

    def report(self) -> str:
        """One line: outcomes and the commonest errors."""
        return (
            f"ok={self.outcomes[Outcome.OK.value]} failed={self.outcomes[Outcome.FAIL.value]} "
            f"unknown={self.outcomes[Outcome.UNKNOWN.value]} "
            f"errors={dict(self.messages.most_common(6))}"
        )


class RecordedKV:
    """Operations through the gateways' KV stubs, recorded into `rec` and counted in `stats`."""

    def __init__(
        self,
        stubs: Sequence[kv_pb2_grpc.KVStub],
        rec: HistoryRecorder | None = None,
        stats: WorkloadStats | None = None,
        *,
        timeout: float = CLIENT_TIMEOUT,
    ) -> None:
        self.stubs = list(stubs)
        self._positions = {id(stub): i for i, stub in enumerate(self.stubs, 1)}
        self.rec = rec if rec is not None else HistoryRecorder()
        self.stats = stats if stats is not None else WorkloadStats()
        self.timeout = timeout

    async def op(
        self,
        cid: int,
        kv: kv_pb2_grpc.KVStub,
        kind: OpKind,
        key: bytes,
        value: bytes | None = None,
        expected: bytes | None = None,
    ) -> Operation:
        """One operation through gateway stub `kv`, recorded with the outcome the client
        can know (CAS: `expected=None` means "expect absent")."""
        op, err = await recorded_op(
            cid, kv, self.rec, kind, key, value, expected, timeout=self.timeout
        )
        if err is not None:
            code = err.code().name
            self.stats.errors[f"{kind.value} {code}"] += 1
            self.stats.messages[f"{code}: {(err.details() or '')[:150]}"] += 1
        elif op.outcome is Outcome.OK and (at := self._positions.get(id(kv))) is not None:
            self.stats.acknowledged_at[at] += 1
        self.stats.count(op)
        return op

    async def read_until_ok(
        self, cid: int, kv: kv_pb2_grpc.KVStub, key: bytes, timeout: float, interval: float
    ) -> Operation:
        """Recorded GETs of `key` until one succeeds (each attempt is in the history);
        TimeoutError when none did within `timeout`."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            op = await self.op(cid, kv, OpKind.GET, key)
            if op.outcome is Outcome.OK:
                return op
            if loop.time() >= deadline:
                raise TimeoutError(f"no read of {key!r} succeeded within {timeout:.0f}s")
            await asyncio.sleep(interval)  # retry pacing under a deadline

    async def client(
        self,
        cid: int,
        keys: Sequence[bytes],
        mix: ClientMix,
        rng: random.Random,
        stop: asyncio.Event,
    ) -> None:
        """Random operations on `keys` through a random gateway each time, until `stop`."""
        seen: dict[bytes, bytes | None] = {}
        for n in itertools.count():
            if stop.is_set():
                return
            kv = rng.choice(self.stubs)
            key = rng.choice(keys)
            roll = rng.random()
            value = b"c%d-%d" % (cid, n)
            if roll < mix.get:
                op = await self.op(cid, kv, OpKind.GET, key)
                if op.outcome is Outcome.OK:
                    seen[key] = op.read
            elif roll < mix.get + mix.put:
                op = await self.op(cid, kv, OpKind.PUT, key, value)
                if op.outcome is Outcome.OK:
                    seen[key] = value
            elif roll < mix.get + mix.put + mix.cas:
                op = await self.op(cid, kv, OpKind.CAS, key, value, seen.get(key))
                if op.outcome is Outcome.OK:
                    seen[key] = value if op.succeeded else op.read
            else:
                op = await self.op(cid, kv, OpKind.DELETE, key)
                if op.outcome is Outcome.OK:
                    seen[key] = None
            await asyncio.sleep(rng.uniform(*mix.pause))  # pacing: leave CPU for the cluster

    async def snapshot_scanner(
        self, sid: int, span: tuple[bytes, bytes], rng: random.Random, stop: asyncio.Event
    ) -> None:
        """Scans of `span` recorded as SCAN operations (client id 2000 + `sid`): the
        checker judges each as a read of the whole span at one instant (one in four
        has a limit of 2: a read of the span up to its last row). A failed scan had
        no effect (FAIL). The gateway pages these internally."""
        start, end = span
        while not stop.is_set():
            kv = rng.choice(self.stubs)
            limit = rng.choice([0, 0, 0, 2])
            op, err = await recorded_scan(
                2000 + sid, kv, self.rec, start, end or None, limit, timeout=self.timeout
            )
            if err is not None:
                self.stats.scan_errors[f"snapshot {err.code().name}"] += 1
            else:
                self.stats.snapshot_scans += 1
            self.stats.count(op)
            await asyncio.sleep(rng.uniform(0.02, 0.1))  # pacing


async def scanner(
    sid: int,
    stubs: Sequence[kv_pb2_grpc.KVStub],
    spec: WorkloadSpec,
    stats: WorkloadStats,
    rng: random.Random,
    stop: asyncio.Event,
) -> None:
    """Whole-keyspace scans (one call, or paged) while everything else happens.

    Whatever a scan returns before it succeeds or fails must be strictly
    ordered; a complete one must hold every never-deleted key exactly once."""
    never_deleted = list(spec.never_deleted)
    while not stop.is_set():
        kv = rng.choice(stubs)
        page = rng.choice(spec.scan_pages)
        keys: list[bytes] = []
        rows: list[tuple[bytes, bytes]] = []  # a whole scan's rows, as they arrive
        complete = True
        try:
            if page:
                await paged_scan(kv, b"", b"", page, keys)
            else:
                await scan_rows(kv, into=rows)
        except grpc.aio.AioRpcError as err:
            stats.scan_errors[err.code().name] += 1
            complete = False
        if not page:
            keys = [k for k, _ in rows]
        problem = ordering_problem(keys)
        if problem is None and complete:
            got = [k for k in keys if k.startswith(spec.never_deleted_prefix)]
            if got != never_deleted:
                problem = f"{len(got)} of {len(never_deleted)} never-deleted keys"
        if problem is not None:
            stats.scan_failures.append(f"scanner {sid} (page {page or 'none'}): {problem}")
        elif complete:
            stats.scans_ok += 1
        else:
            stats.scans_partial += 1
        await asyncio.sleep(rng.uniform(*spec.scan_pause))  # pacing


class Workload:
    """The clients and scanners of `spec` through `stubs`, all recorded in one history.

    `await load()` writes the never-deleted keys; `start()` runs everyone until
    `await stop()`, which lets each finish (and record) the operation in flight."""

    def __init__(
        self,
        spec: WorkloadSpec,
        stubs: Sequence[kv_pb2_grpc.KVStub],
        rec: HistoryRecorder | None = None,
        stats: WorkloadStats | None = None,
        *,
        timeout: float = CLIENT_TIMEOUT,
    ) -> None:
        self.spec = spec
        self.kv = RecordedKV(stubs, rec, stats, timeout=timeout)
        self.rec = self.kv.rec
        self.stats = self.kv.stats
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    async def load(self) -> None:
        await load(self.kv.stubs[0], [(k, b"s") for k in self.spec.never_deleted])

    def start(self) -> None:
        spec, seed = self.spec, self.spec.seed * 1000
        self._tasks = [
            *(
                asyncio.create_task(
                    self.kv.client(c, spec.keys, spec.mix, random.Random(seed + c), self._stop)
                )
                for c in range(spec.clients)
            ),
            *(
                asyncio.create_task(
                    scanner(
                        s,
                        self.kv.stubs,
                        spec,
                        self.stats,
                        random.Random(seed + 500 + s),
                        self._stop,
                    )
                )
                for s in range(spec.scanners)
            ),
            *(
                asyncio.create_task(
                    self.kv.snapshot_scanner(
                        s, spec.snapshot_span, random.Random(seed + 700 + s), self._stop
                    )
                )
                for s in range(spec.snapshot_scanners)
            ),
        ]

    async def stop(self) -> None:
        """Stop everyone after their operation in flight (which is recorded)."""
        self._stop.set()
        await asyncio.gather(*self._tasks)

    def operations(self) -> list[Operation]:
        return self.rec.operations()


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
