"""The chaos harness: a real cluster, clients through gateways and raftnodes, a seeded nemesis.

`run_chaos(ChaosConfig(...))` starts a cluster of the test kit
(tests/testkit; separate processes: metarange replicas, raftnodes, gateways)
in the chosen FSM sync mode, and then, for `duration` seconds:

* the kit's recorded workload runs: clients do gets, puts, deletes and
  compare-and-swaps over a few register keys through a random KV endpoint
  each time -- one of the gateways, or the KV API of raftnode 1 or 2 (served
  in process for the ranges that node leads, forwarded for the others) --
  (values are unique, so reads pin the order down); scanners scan the
  whole keyspace (one call or paged) and check that keys come strictly
  ordered, never twice, and that a complete scan holds every key that is
  written once and never deleted;
* a nemesis, on a schedule drawn from `seed`, injects one fault at a time:
  - `kill`: kill -9 of a leaseholder (most often), the metarange leader,
    another raftnode, a metarange replica or a gateway, restarted after a
    random delay;
  - `pause`: SIGSTOP of a range's leaseholder for longer than the lease AND
    the election timeout, then SIGCONT. While it is stopped the nemesis writes
    a fresh value of a probe key through the new leaseholder and, once that
    write is acknowledged, sends recorded reads of the key straight to the
    paused node (Replica.Batch): they wait in its socket and are served the
    moment it resumes, still believing it leads -- the classic stale read;
  - `isolate_write`: SIGSTOP of every other raftnode, a recorded write sent
    straight to the leaseholder (it cannot reach a quorum), kill -9 of the
    leaseholder, SIGCONT of the others, restart: a write that was acknowledged
    without a quorum is lost, and the probe's later reads show it;
  - `transfer`: a lease transfer of a random range to a random node;
  - `split`: Replica.AdminSplit of the range holding a random key;
  - `change_replicas`: add a replica of a random range on a node without one
    (learner, catch-up, promotion), then remove another non-leaseholder voter;
  - `partition_leaseholder`: cut every raft link of a range's leaseholder
    (gateways still reach it) past the lease and election timeout, then heal;
  - `partition_halves`: cut the raftnodes into a minority (1 or 2) and a
    majority for a while, then heal;
  - `partition_pause`: cut the probe key's leaseholder from its peers, SIGSTOP
    it, write through the new leaseholder, SIGCONT and read straight from the
    old one: it cannot hear the new term, so only its lease check stands
    between it and a stale read (what `lease_without_check` removes);
  - `lost_transfer`: on an idle range, cut a caught-up follower off and ask the
    leaseholder to hand it the lease, so TIMEOUT_NOW is lost: the range must
    hold a valid lease again, in a later term, within 10 s (else a problem of
    the run: a leader leading on without a lease);
  - `refuse_raft`: one raftnode refuses every raft stream and snapshot sent to
    it for a few seconds (PERMISSION_DENIED, as its authorization would refuse
    a caller that is not a node; RANGEKV_TEST_REFUSE_RAFT_FILE), then accepts
    again, in the same processes: its peers must count the refusals and their
    lanes must recover, so that its replicas catch up within the catch-up
    budget (both are problems of the run otherwise);
  - `power_cut`: a follower of a range no client writes (split off at
    POWER_CUT_KEY) loses power (in nosync; a plain kill -9 in sync) right after
    its raft log was truncated past writes it had applied, then restarts: it
    must replay them, or the replica checksums report it.
  Partitions are real: every raftnode runs in its own network namespace joined
  to the others by veth pairs (netns.py; links cut by setting them down). When
  namespaces cannot be made (not root, no iproute2), the run goes on without
  the partition faults and the report says "partitions: unavailable (why)".
* every operation is recorded (invoke/complete, ok / fail / unknown) and the
  history is judged by `rangekv.check.check_history`;
* after the heal, every replica of every range must catch up with what its
  leader had committed (`Replicas.lagging`): a replica left behind for good (a
  raft lane that never recovers, a snapshot that never lands) breaks no history
  while the others make a quorum, but it is one fault away from an unavailable
  range;
* then every replica of every range, and of the meta range, must hold the same
  state as the others at the same applied index (`Replicas.diverged`,
  `MetaReplicas.diverged`: each replica's own checksum of its engine): a
  follower that lost or skipped an effect answers no read until the lease
  moves to it, so the history cannot show it. The ranges' checksums are also
  sampled every `CHECKSUM_POLL` seconds during the run (`ChecksumWatch`), so a
  divergence that a later fault repaired is still seen.

Each run writes `report.json` and `summary.txt` (and `history.json`) into
`report_dir`: operations by kind and outcome, faults with their times, the
checker's verdict and time, scan statistics, the seed, and how to replay.

Replay a saved history through the checker:
    python tests/chaos/harness.py check REPORT_DIR/history.json
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import itertools
import json
import math
import random
import re
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the test kit, run as a script

import chaos_tls
import grpc
from netns import NetLab, try_netlab
from testkit.cluster import Cluster, ClusterSpec, alive
from testkit.kv import CLIENT_TIMEOUT, ordering_problem, scan_keys
from testkit.meta import MetaReplicas
from testkit.metrics import fetch_metrics, metric_value
from testkit.replicas import Replicas, error_text
from testkit.waiting import async_wait_for
from testkit.workload import ClientMix, RecordedKV, Workload, WorkloadSpec, WorkloadStats

from rangekv.check import (
    Operation,
    OpKind,
    Outcome,
    check_history,
    load_history,
    save_history,
)
from rangekv.check.kv_client import recorded_scan
from rangekv.cli.cluster import Child
from rangekv.common import errors as E
from rangekv.common.clock import ENV_VAR as CLOCK_ENV
from rangekv.replication.checksum import ChecksumLedger
from rangekv.replication.mutations import POWER_LOSS_ENV, REFUSE_RAFT_ENV, SNAPSHOT_DELAY_ENV
from rangekv.v1 import kv_pb2, kv_pb2_grpc, meta_pb2, meta_pb2_grpc, replica_pb2, replica_pb2_grpc

#: Seconds every replica has, after the heal and the final reads, to apply what its
#: range's leader had committed (`Replicas.lagging`): a snapshot of a busy range
#: on a slow machine fits many times over.
CATCH_UP_BUDGET = 60.0
#: Seconds between the replica-checksum polls of a run (`ChecksumWatch`).
CHECKSUM_POLL = 2.0
REG_KEYS = [b"reg/%d" % i for i in range(5)]
SCAN_KEYS = [b"s/%03d" % i for i in range(60)]
PROBE_KEY = b"probe"  # written only by the nemesis, so a stale read of it is unambiguous
SPLIT_CANDIDATES = [b"probe", b"reg/2", b"reg/4", b"s/020", b"s/040", b"s/050", b"t"]
ALL_FAULTS = (
    "kill",
    "pause",
    "isolate_write",
    "transfer",
    "split",
    "change_replicas",
    "partition_leaseholder",
    "partition_halves",
    "partition_pause",
    "clock",
    "snapshot_race",
    "lost_transfer",
    "overload",
    "refuse_raft",
    "power_cut",
)
#: Where the register keys are split at start, so that a scan of them spans ranges.
REG_SPLITS = (b"reg/2", b"reg/4")
#: The span the snapshot scanners read: every register key, across those ranges.
REG_SPAN = (b"reg/", b"reg0")
#: The raftnodes' maximum clock offset (their default; the clock fault stays
#: within 80% of it, or goes to 2.5x it on one node at a time).
MAX_OFFSET_MS = 500
#: Report names of the faults whose method name says it differently (the others'
#: are the method's name with hyphens: `lost_transfer` is "lost-transfer").
REPORT_NAMES = {
    "kill": "kill -9",
    "isolate_write": "isolate+kill -9",
    "partition_pause": "partition+pause",
    "power_cut": "power-cut-after-truncation",
}
#: Faults that need the network namespaces (dropped, and reported, when unavailable).
PARTITION_FAULTS = (
    "partition_leaseholder",
    "partition_halves",
    "partition_pause",
    "lost_transfer",
)
#: A key no client writes: the lost-transfer fault splits there, so that its range is
#: idle and a follower can hold the whole log when the transfer is asked for.
LOST_TRANSFER_KEY = b"zz/lost-transfer"
#: A key no client writes: the power-cut fault splits there, so that a follower
#: restarting after its cut is caught up from its log, not by a snapshot.
POWER_CUT_KEY = b"zz/power-cut"
#: Seconds a range may go without a valid lease after a lost transfer was abandoned
#: (an election timeout of 1 s to abandon it, then one election) before the run
#: counts it as a problem.
LOST_TRANSFER_LEASE_WAIT = 10.0
#: How long a fault waits for the leaseholder it needs (a range split a moment ago
#: has one within a tick or two; a range without one after this is reported).
LEASEHOLDER_WAIT = 10.0
PROBE_CLIENT = 900  # client ids of the nemesis's own recorded operations
#: Raft log entries a raftnode keeps below its applied index (aggressive: see NODE_ARGS).
LOG_RETAIN_ENTRIES = 20
NODE_ARGS = [
    "--txn-expiry",
    "2.0",
    "--split-check-interval",
    "1.0",
    # Aggressive log truncation: a follower that falls a little behind needs a
    # snapshot, so snapshots race lease moves (the snapshot_race fault).
    "--log-retain-entries",
    str(LOG_RETAIN_ENTRIES),
    "--truncate-interval",
    "0.5",
    # A write queue the overload fault can fill (a workload client has one operation
    # in flight at a time: 6 clients and the nemesis's own writes stay far below it).
    "--max-queued-writes",
    "64",
]
#: Concurrent writes of one overload fault, through one gateway, to fresh keys: over
#: the queue, under the 256 calls one connection may have open at a gateway (the
#: gateway refuses more streams, and a client cannot know whether those wrote).
#: Whether the gateway gathers a batch beyond the queue depends on timing.
OVERLOAD_BURST = 200
#: Writes of the overload fault's one batch sent straight to the leaseholder: twice
#: the queue, so it is refused whatever the timing.
OVERLOAD_DIRECT = 128
#: Client ids of the overload bursts' writes and scans (one id per operation).
BURST_CLIENT = 100_000


@dataclass
class ChaosConfig:
    seed: int
    duration: float
    sync_mode: str = "sync"
    report_dir: Path = Path("chaos-report")
    n_meta: int = 3
    n_nodes: int = 5
    n_gateways: int = 2
    #: Raftnodes (1..n) whose own KV API the workload's clients and scanners use
    #: beside the gateways: their batches for the ranges they lead are served in
    #: process, the rest forwarded, and the checker judges both routes.
    n_node_endpoints: int = 2
    n_clients: int = 6
    n_scanners: int = 2
    faults: tuple[str, ...] = ALL_FAULTS
    #: Seconds every replica has to apply what its range's leader had committed, after
    #: a refuse_raft fault and after the heal (`Replicas.lagging`).
    catch_up_budget: float = CATCH_UP_BUDGET
    #: RANGEKV_TEST_MUTATION for the raftnodes ("" = a correct build).
    mutation: str = ""
    #: Seconds between faults (drawn uniformly).
    quiet: tuple[float, float] = (1.0, 3.0)
    check_timeout: float = 120.0
    #: Run each raftnode in its own network namespace (netns.py) so that links can be
    #: cut; when that is impossible the run goes on without partition faults.
    partitions: bool = True
    #: Scanners whose scans of REG_SPAN go into the history (judged as snapshots).
    n_snapshot_scanners: int = 2
    #: In FSM sync mode nosync, raftnodes lose their unsynced state writes on
    #: kill -9 (RANGEKV_TEST_POWER_LOSS): every raftnode kill is a power cut.
    power_loss: bool = True


@dataclass
class Fault:
    kind: str
    target: str
    start: float
    end: float = math.nan
    detail: str = ""


@dataclass
class ChaosResult:
    ok: bool | None
    explanation: str
    report: dict[str, Any]
    report_dir: Path
    ops: list[Operation]
    problems: list[str] = field(default_factory=list)


# ----------------------------------------------------------------------------- cluster access


class ChaosCluster:
    """The kit's cluster plus what the nemesis needs: its network lab, the raftnodes'
    view (`replicas`), the metarange leader and the raftnodes' refusal counters."""

    def __init__(self, cluster: Cluster, lab: NetLab | None = None) -> None:
        self.cluster = cluster
        self.lab = lab
        self.replicas = Replicas(cluster)

    async def refusals(self, reason: str, exclude: Child | None = None) -> dict[str, int]:
        """rangekv_node_refused_total{reason=...} of each usable raftnode (by name)."""
        return await self.node_counts("rangekv_node_refused_total", exclude, reason=reason)

    async def node_counts(
        self, metric: str, exclude: Child | None = None, **labels: str
    ) -> dict[str, int]:
        """A counter (its samples with `labels`, summed) of each usable raftnode (by
        name) whose metrics answered; one that did not answer is left out, and the
        caller sees it is missing (a count it cannot read is not a zero)."""
        out: dict[str, int] = {}
        for child in self.cluster.nodes:
            if child is exclude or not self.cluster.usable(child):
                continue
            try:
                text = await asyncio.to_thread(fetch_metrics, child.metrics, 3.0)
            except OSError:
                continue
            out[child.name] = int(metric_value(text, metric, **labels))
        return out

    async def meta_leader(self) -> Child | None:
        """The metarange replica that leads the meta range, as a live replica says."""
        for child in self.cluster.meta:
            if not alive(child):
                continue
            try:
                async with chaos_tls.channel(child.address) as ch:
                    info = await meta_pb2_grpc.MetaStub(ch).ClusterInfo(
                        meta_pb2.ClusterInfoRequest(), timeout=2
                    )
            except grpc.aio.AioRpcError:
                continue
            if info.leader_node_id in self.cluster.meta_ids:
                return self.cluster.meta_replica(info.leader_node_id)
        return None


def set_arg(args: list[str], flag: str, value: str) -> None:
    """Replace the value of `flag` in a command line (append the pair if absent)."""
    if flag in args:
        args[args.index(flag) + 1] = value
    else:
        args += [flag, value]


def place_in_namespaces(cluster: Cluster, lab: NetLab) -> None:
    """Run each raftnode inside its namespace on its identity address; metarange
    listens on the host address (reachable from every namespace over its root
    link), gateways stay on loopback and reach meta and the nodes from the root."""
    lc, host = cluster.lc, lab.host_ip
    meta_peers = ",".join(f"{i}={host}:{p}" for i, p in lc.layout.meta.items())
    lc.meta_addrs = ",".join(f"{host}:{p}" for p in lc.layout.meta.values())
    for child in lc.meta:
        set_arg(child.args, "--peers", meta_peers)
        set_arg(child.args, "--listen-host", host)
    node_peers = ",".join(f"{i}={lab.node_ip(i)}:{p}" for i, p in lc.layout.nodes.items())
    for nid, child in zip(lc.layout.nodes, lc.nodes, strict=True):
        set_arg(child.args, "--peers", node_peers)
        set_arg(child.args, "--meta-addrs", lc.meta_addrs)
        set_arg(child.args, "--listen-host", lab.node_ip(nid))
        # Its metrics too: bound to the namespace's loopback, the harness could not
        # read them from the host (and would count nothing where it must count).
        set_arg(child.args, "--metrics-host", lab.node_ip(nid))
        cluster.place(child, lab.prefix(nid))
    for child in lc.gateways:
        set_arg(child.args, "--meta-addrs", lc.meta_addrs)


# ----------------------------------------------------------------------------- outcomes


def replica_write_outcome(exc: E.RangeKVError) -> Outcome:
    """The outcome of an in-band ReplicaError for a write sent straight to a replica."""
    if isinstance(exc, E.NotLeaseHolder | E.RangeKeyMismatch | E.InvalidArgument):
        return Outcome.FAIL  # refused before it was proposed
    if isinstance(exc, E.ResourceExhausted):
        return Outcome.FAIL  # overloaded: nothing was written (the overload fault checks it)
    if isinstance(exc, E.Unavailable) and exc.outcome == E.WriteOutcome.NOT_APPLIED:
        return Outcome.FAIL
    return Outcome.UNKNOWN


async def _direct_batch(
    kv: RecordedKV,
    kind: OpKind,
    stub: replica_pb2_grpc.ReplicaStub,
    range_id: int,
    ops_pb: Sequence[replica_pb2.ReplicaOp],
    timeout: float,
) -> tuple[Outcome, replica_pb2.ReplicaBatchResponse | None, E.RangeKVError | None]:
    """One Replica.Batch of `kind` operations straight to one replica: the outcome
    its operations share, the answer (when OK) and the in-band error (if any); a
    failure is counted in `kv`'s stats."""
    try:
        resp = await stub.Batch(
            replica_pb2.ReplicaBatchRequest(range_id=range_id, ops=ops_pb), timeout=timeout
        )
    except grpc.aio.AioRpcError as err:
        kv.stats.errors[f"direct {kind.value} {err.code().name}"] += 1
        return (Outcome.FAIL if kind is OpKind.GET else Outcome.UNKNOWN), None, None
    if resp.HasField("error"):
        exc = E.from_replica_error(resp.error)
        kv.stats.errors[f"direct {kind.value} {type(exc).__name__}"] += 1
        return (Outcome.FAIL if kind is OpKind.GET else replica_write_outcome(exc)), None, exc
    return Outcome.OK, resp, None


async def direct_op(
    kv: RecordedKV,
    cid: int,
    stub: replica_pb2_grpc.ReplicaStub,
    range_id: int,
    kind: OpKind,
    key: bytes,
    value: bytes | None = None,
    timeout: float = CLIENT_TIMEOUT,
) -> Operation:
    """A GET or PUT sent straight to one replica (Replica.Batch), recorded in `kv`'s
    history and counted in its stats."""
    rec = kv.rec
    handle = rec.invoke(cid, kind, key, value=value)
    if kind is OpKind.GET:
        op_pb = replica_pb2.ReplicaOp(get=replica_pb2.GetOp(key=key))
    else:
        op_pb = replica_pb2.ReplicaOp(put=replica_pb2.PutOp(key=key, value=value))
    outcome, resp, _exc = await _direct_batch(kv, kind, stub, range_id, [op_pb], timeout)
    if outcome is Outcome.OK and kind is OpKind.GET:
        assert resp is not None
        got = resp.results[0].get
        op = rec.ok(handle, read=got.kv.value if got.found else None)
    else:
        op = _RECORD[outcome](rec, handle)
    kv.stats.count(op)
    return op


async def direct_puts(
    kv: RecordedKV,
    cids: Iterator[int],
    stub: replica_pb2_grpc.ReplicaStub,
    range_id: int,
    items: Sequence[tuple[bytes, bytes]],
    timeout: float = CLIENT_TIMEOUT,
) -> tuple[list[Operation], E.RangeKVError | None]:
    """PUTs of `items` in ONE Replica.Batch straight to one replica, each recorded as
    an operation of its own client (they share the batch's outcome); returns them
    and the in-band error, if any."""
    rec = kv.rec
    handles = [rec.invoke(next(cids), OpKind.PUT, k, value=v) for k, v in items]
    ops_pb = [replica_pb2.ReplicaOp(put=replica_pb2.PutOp(key=k, value=v)) for k, v in items]
    outcome, _resp, exc = await _direct_batch(kv, OpKind.PUT, stub, range_id, ops_pb, timeout)
    ops = [_RECORD[outcome](rec, h) for h in handles]
    for op in ops:
        kv.stats.count(op)
    return ops, exc


#: How an operation of each outcome is recorded (an OK GET also records its read).
_RECORD: dict[Outcome, Callable[[Any, Any], Operation]] = {
    Outcome.OK: lambda rec, h: rec.ok(h),
    Outcome.FAIL: lambda rec, h: rec.fail(h),
    Outcome.UNKNOWN: lambda rec, h: rec.unknown(h),
}


# ----------------------------------------------------------------------------- workload


def workload_spec(cfg: ChaosConfig) -> WorkloadSpec:
    """The kit's recorded workload as the chaos run uses it: clients on the register
    keys, structural scanners of the whole keyspace, snapshot scanners of REG_SPAN."""
    return WorkloadSpec(
        keys=tuple(REG_KEYS),
        never_deleted=tuple(SCAN_KEYS),
        clients=cfg.n_clients,
        scanners=cfg.n_scanners,
        mix=ClientMix(get=0.4, put=0.25, cas=0.25, pause=(0.0, 0.03)),
        scan_pages=(0, 0, 17),
        scan_pause=(0.1, 0.3),
        snapshot_scanners=cfg.n_snapshot_scanners,
        snapshot_span=REG_SPAN,
        seed=cfg.seed,
    )


# ----------------------------------------------------------------------------- nemesis


class Nemesis:
    def __init__(self, cluster: ChaosCluster, cfg: ChaosConfig, kv: RecordedKV, t0: float) -> None:
        self.c = cluster
        #: The kit's cluster and its raftnodes' view.
        self.cluster = cluster.cluster
        self.replicas = cluster.replicas
        self.cfg = cfg
        self.rng = random.Random(cfg.seed)
        #: Recorded operations through the gateways (the nemesis's own probes).
        self.kv = kv
        self.rec = kv.rec
        self.stats = kv.stats
        self.stubs = kv.stubs
        self.t0 = t0
        self.faults: list[Fault] = []
        #: Times peers refused a node whose clock was beyond the bound (fault_clock).
        self.clock_refusals = 0
        #: Beyond-the-bound clock faults whose refusals could be counted, and those of
        #: them that saw none: a peer that followed such a clock is a failed run.
        self.clock_beyond = 0
        self.clock_unrefused: list[str] = []
        #: Final reads of slow-snapshot races that did not see the last write.
        self.race_stale_reads = 0
        #: Overload faults, and the batches the raftnodes refused for a full queue in them.
        self.overloads = 0
        self.overload_refusals = 0
        #: Bursts with a refusal whose scan succeeded: the ones the checker can judge.
        self.overloads_judged = 0
        self.burst_cid = itertools.count(BURST_CLIENT)
        #: Lost transfers after which no node held a valid lease in a later term.
        self.leases_not_regained: list[str] = []
        #: Raft streams the peers of a refusing node counted as refused (fault_refuse_raft),
        #: the refusal faults whose counts could be read, and those that saw none.
        self.raft_refusals = 0
        self.refuse_faults = 0
        self.raft_unrefused: list[str] = []
        #: Replicas still behind once a refusing node accepted again (its peers' lanes
        #: did not recover), one line each.
        self.left_behind: list[str] = []
        self.probe_n = 0
        self.probe_cid = itertools.count(PROBE_CLIENT)

    def now(self) -> float:
        return round(time.monotonic() - self.t0, 3)

    def begin(self, kind: str, target: str, detail: str = "") -> Fault:
        fault = Fault(kind, target, self.now(), detail=detail)
        self.faults.append(fault)
        return fault

    def end(self, fault: Fault, detail: str = "") -> None:
        fault.end = self.now()
        if detail:
            fault.detail = f"{fault.detail}; {detail}" if fault.detail else detail

    async def run(self, stop_at: float) -> None:
        while time.monotonic() < stop_at:
            await asyncio.sleep(self.rng.uniform(*self.cfg.quiet))
            if time.monotonic() >= stop_at:
                return
            kind = self.rng.choice(self.kinds())
            name = REPORT_NAMES.get(kind, kind.replace("_", "-"))
            await self.attempt(name, getattr(self, f"fault_{kind}"))
            await self.heal()

    async def attempt(self, name: str, inject: Callable[[], Awaitable[object]]) -> bool:
        """Inject one fault, reported as `name`; returns whether it ran.

        The cluster may be in the middle of recovering from the last fault: one
        that cannot be injected now (TimeoutError, AioRpcError) is reported as
        skipped, saying why, and counted once: if it had begun, its own unfinished
        record says "skipped" (it may have done part of its work, which the rest of
        the record tells), else a record of its own, under `name`, does."""
        before = len(self.faults)
        try:
            await inject()
            return True
        except (TimeoutError, grpc.aio.AioRpcError) as exc:
            unfinished = [f for f in self.faults[before:] if math.isnan(f.end)]
            if unfinished:
                fault = unfinished[-1]
                fault.end = self.now()
                fault.detail = (
                    f"skipped: {exc}; {fault.detail}" if fault.detail else f"skipped: {exc}"
                )
            else:
                self.faults.append(Fault(name, "-", self.now(), self.now(), f"skipped: {exc}"))
            return False

    def kinds(self) -> list[str]:
        """The configured faults this run can inject (no partitions without namespaces)."""
        if self.c.lab is not None:
            return list(self.cfg.faults)
        return [k for k in self.cfg.faults if k not in PARTITION_FAULTS]

    async def heal(self) -> None:
        """Restore every cut link, resume every paused process and restart every dead one."""
        if self.c.lab is not None and self.c.lab.cut:
            n = len(self.c.lab.cut)
            fault = self.begin("heal", "network", f"{n} cut links restored")
            self.c.lab.heal()
            self.end(fault)
        for child in self.cluster.children:
            if child.name in self.cluster.paused:
                self.cluster.resume(child)
            if not alive(child):
                await self.restart(child)

    async def restart(self, child: Child) -> None:
        for attempt in range(3):
            try:
                await self.cluster.start_children([child], timeout=60)
                return
            except (TimeoutError, RuntimeError) as exc:
                self.faults.append(
                    Fault("restart-failed", child.name, self.now(), self.now(), str(exc))
                )
                await asyncio.sleep(1.0 + attempt)

    async def kill9(self, child: Child) -> None:
        await self.cluster.kill(child)

    # --- faults -----------------------------------------------------------------------

    async def fault_kill(self) -> None:
        """kill -9 and restart: leaders and leaseholders first."""
        roll = self.rng.random()
        leader = await self.c.meta_leader() if 0.45 <= roll < 0.6 else None
        if roll < 0.45:
            key = self.rng.choice([*REG_KEYS, PROBE_KEY, *SCAN_KEYS[::20]])
            _rid, holder = await self.replicas.leaseholder_of(key)
            child = self.cluster.node(holder) if holder else self.rng.choice(self.cluster.nodes)
            why = f"leaseholder of {key!r}" if holder else "no leaseholder found"
        elif roll < 0.6:
            child = leader or self.rng.choice(self.cluster.meta)
            why = "metarange leader" if leader else "metarange replica (no leader found)"
        elif roll < 0.7:
            child, why = self.rng.choice(self.cluster.nodes), "random raftnode"
        elif roll < 0.9:
            child, why = self.rng.choice(self.cluster.meta), "random metarange replica"
        else:
            child, why = self.rng.choice(self.cluster.gateways), "random gateway"
        down = self.rng.uniform(0.5, 3.0)
        kind = "kill -9"
        if child in self.cluster.nodes and self.cluster.nodes and POWER_LOSS_ENV in child.env:
            kind = "power-loss"  # kill -9 loses this node's unsynced state writes
        fault = self.begin(kind, child.name, f"{why}; down {down:.1f}s")
        await self.kill9(child)
        await asyncio.sleep(down)
        await self.restart(child)
        self.end(fault, "restarted")

    async def fault_power_cut(self) -> None:
        """`power_cut_after_truncation` (on its own idle range)."""
        await self.power_cut_after_truncation()

    async def power_cut_after_truncation(self) -> Fault:
        """A follower loses power right after its raft log was truncated past writes it
        had applied but (FSM sync mode nosync) not synced.

        A correct node syncs its state engine before every truncation, so after the
        cut it replays the lost effects from the entries its log still holds. A node
        that truncated first (mutation truncate_before_sync) has lost the entries
        too: it resumes past them, and its replica holds less than its peers at the
        same applied index, which only the replica checksums show (reads go to the
        leaseholder).

        The range is the one holding POWER_CUT_KEY, which no client writes: on a
        busy range the leader's log moved more than LOG_RETAIN_ENTRIES past the
        follower while it restarted, so it was sent a snapshot, which replaces its
        state wholesale and hides the loss. Steps: one write, and wait until the
        follower applied it (`follower_caught_up`); 3 x LOG_RETAIN_ENTRIES writes;
        wait (observed, up to 20 s) until that follower's log starts more than
        LOG_RETAIN_ENTRIES past where its applied index stood; kill -9 (a power cut
        when the node runs with RANGEKV_TEST_POWER_LOSS) and restart; one more
        write, applied by the follower. The detail says whether the follower
        replayed its log or was sent a snapshot."""
        key = POWER_CUT_KEY
        split = await self.split_at(key)
        rid, holder = await self.replicas.wait_leaseholder_of(key, LEASEHOLDER_WAIT)
        desc = await self.replicas.newest(rid)
        if desc is None or desc.start_key != key:  # reported as skipped by `attempt`
            raise TimeoutError(f"range {rid} does not start at {key!r} (split: {split})")
        followers = [n for n in desc.voter_node_ids if n != holder]
        target = self.rng.choice(followers)
        child = self.cluster.node(target)
        fault = self.begin("power-cut-after-truncation", child.name, f"range {rid}")
        start = (await self.follower_caught_up(key, rid, target)).applied_index
        for _ in range(3 * LOG_RETAIN_ENTRIES):
            await self.write_key(key)
        first = applied = 0

        async def truncated() -> bool:
            nonlocal first, applied
            now = await self.replicas.info(target, rid)
            if now is None:
                return False
            if now.is_leader:  # not a follower any more: not this fault
                raise TimeoutError(f"node {target} became range {rid}'s leader")
            first, applied = now.log_first_index, now.applied_index
            return first > start + LOG_RETAIN_ENTRIES

        await async_wait_for(truncated, 20, f"node {target} to truncate range {rid}'s log", 0.1)
        await self.kill9(child)
        await self.restart(child)
        await self.replicas.wait_leaseholder_of(key, LEASEHOLDER_WAIT)
        restarted_from = (await self.follower_caught_up(key, rid, target)).log_first_index
        # A snapshot from the leader starts the follower's log past everything it
        # had (the leader sends one only then); its own truncations keep
        # LOG_RETAIN_ENTRIES below what it applied.
        how = (
            "replayed its log"
            if restarted_from <= applied + 1
            else f"its log starts at {restarted_from}, past its applied index {applied} "
            "before the cut: sent a snapshot"
        )
        self.end(
            fault,
            f"log truncated past applied index {start} (to {first - 1}, applied {applied}), "
            f"then power cut; restarted, {how}",
        )
        return fault

    async def follower_caught_up(
        self, key: bytes, rid: int, target: int
    ) -> replica_pb2.ReplicaInfo:
        """Write `key` once, then wait until follower `target` has applied as much as
        any voter of range `rid` had applied after that write (so that write, and
        every entry before it); returns the follower's view of the range then.

        Measuring from an index the follower had not applied yet made the fault
        vacuous on a slow machine: an entry it applied later that syncs its state
        engine (a split's apply does) made everything up to the truncation durable,
        so the power cut lost nothing even on a build that truncates before syncing.
        After this, only the truncation itself may sync (the correct build)."""
        await self.write_key(key)
        voters = await self.replicas.voters(rid)
        seen = await self.replicas.range_infos(rid, voters)
        if not seen:  # reported as skipped by `attempt`: nothing to measure from
            raise TimeoutError(f"no voter of range {rid} reported it")
        goal = max(i.applied_index for i in seen)
        view: list[replica_pb2.ReplicaInfo] = []

        async def caught_up() -> bool:
            now = await self.replicas.info(target, rid)
            view[:] = [now] if now is not None else []
            return now is not None and now.applied_index >= goal

        await async_wait_for(caught_up, 20, f"node {target} to apply range {rid}'s writes", 0.1)
        return view[0]

    async def fault_overload(self) -> None:
        """Writes to fresh keys of one span beyond what a leaseholder may queue (the
        chaos raftnodes' `--max-queued-writes`): a burst of OVERLOAD_BURST
        concurrent PUTs through one gateway (which gathers them into batches as
        timing allows), then one batch of OVERLOAD_DIRECT PUTs straight to the
        leaseholder (refused whatever the timing), then one recorded scan of the span.

        A batch the leaseholder refuses is answered RESOURCE_EXHAUSTED, which
        the client records as FAIL: nothing was written. If any of it was
        written anyway, the scan sees a value of a failed write, and the checker
        finds no order that explains it. The refusals are counted from the
        raftnodes' `rangekv_node_refused_total{reason="overloaded"}`."""
        self.overloads += 1
        prefix = b"burst/%03d/" % self.overloads
        stub = self.rng.choice(self.stubs)
        before = await self.c.refusals("overloaded")
        fault = self.begin(
            "overload", prefix.decode(), f"{OVERLOAD_BURST} concurrent puts, then {OVERLOAD_DIRECT}"
        )
        ops = await asyncio.gather(
            *(
                self.kv.op(next(self.burst_cid), stub, OpKind.PUT, prefix + b"%04d" % i, b"b%d" % i)
                for i in range(OVERLOAD_BURST)
            )
        )
        rid, holder = await self.replicas.wait_leaseholder_of(prefix, LEASEHOLDER_WAIT)
        items = [(prefix + b"d%04d" % i, b"d%d" % i) for i in range(OVERLOAD_DIRECT)]
        async with chaos_tls.channel(self.cluster.node(holder).address) as ch:
            direct, refusal = await direct_puts(
                self.kv, self.burst_cid, replica_pb2_grpc.ReplicaStub(ch), rid, items
            )
        ops += direct
        scan, _err = await recorded_scan(
            next(self.burst_cid), stub, self.kv.rec, prefix, prefix[:-1] + b"0", timeout=10.0
        )
        after = await self.c.refusals("overloaded")
        refused = sum(after[n] - before[n] for n in before.keys() & after.keys())
        self.overload_refusals += refused
        if refused and scan.outcome is Outcome.OK:
            self.overloads_judged += 1
        outcomes = Counter(op.outcome.value for op in ops)
        seen = "failed" if scan.outcome is not Outcome.OK else f"{len(scan.rows or [])} rows"
        said = type(refusal).__name__ if refusal is not None else "OK"
        self.end(
            fault,
            f"outcomes {dict(outcomes)}; the direct batch: {said}; refused for a full queue "
            f"{refused} times; scan {seen}",
        )

    async def probe_write(self, what: str) -> Operation:
        """A recorded write of a fresh probe value through a gateway, retried until OK."""
        for _ in range(20):
            self.probe_n += 1
            value = b"p%d" % self.probe_n
            op = await self.kv.op(
                next(self.probe_cid),
                self.rng.choice(self.stubs),
                OpKind.PUT,
                PROBE_KEY,
                value,
            )
            if op.outcome is Outcome.OK:
                return op
        raise TimeoutError(f"no probe write was acknowledged ({what})")

    async def probe_write_direct(self, paused: int) -> Operation:
        """A recorded write of a fresh probe value straight to the leaseholder that
        replaced `paused` (a gateway whose cache names the paused node would sit on
        it until its deadline), retried until acknowledged."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 30
        while loop.time() < deadline:
            rid, holder = await self.replicas.leaseholder_of(PROBE_KEY, exclude=paused)
            if holder is None:
                await asyncio.sleep(0.1)
                continue
            self.probe_n += 1
            async with chaos_tls.channel(self.cluster.node(holder).address) as ch:
                op = await direct_op(
                    self.kv,
                    next(self.probe_cid),
                    replica_pb2_grpc.ReplicaStub(ch),
                    rid,
                    OpKind.PUT,
                    PROBE_KEY,
                    b"p%d" % self.probe_n,
                    timeout=3.0,
                )
            if op.outcome is Outcome.OK:
                return op
        raise TimeoutError("no probe write through a new leaseholder was acknowledged")

    async def fault_pause(self, pause_for: float | None = None) -> None:
        """SIGSTOP the probe key's leaseholder past the lease and the election timeout;
        write through the new leaseholder, then read straight from the paused node.

        The reads travel on a connection made before the pause, so they are the
        first thing the node reads when it resumes. A pause longer than the raft
        transport's keepalive (10 s + 5 s) also makes its peers drop their
        connections to it, so the new leader's messages (which would depose it)
        arrive only after a reconnect: that is what makes the stale read of a
        broken build certain rather than a race (the mutation test uses 20 s)."""
        rid, holder, child, pause_for = await self._pause_target("before the pause", pause_for)
        async with chaos_tls.channel(child.address) as ch:
            stub = replica_pb2_grpc.ReplicaStub(ch)
            await stub.RangeInfo(replica_pb2.RangeInfoRequest(), timeout=2)  # connect now
            fault = self.begin("pause", child.name, f"leaseholder of range {rid}")
            started = time.monotonic()
            self.cluster.pause(child)
            try:
                fresh = await self.probe_write_direct(holder)
                reads = [self._probe_read(stub, rid, pause_for + 10) for _ in range(8)]
                await asyncio.sleep(max(0.2, pause_for - (time.monotonic() - started)))
            finally:
                self.cluster.resume(child)
            got = await asyncio.gather(*reads)
        stale = sum(1 for op in got if op.outcome is Outcome.OK and op.read != fresh.value)
        served = sum(1 for op in got if op.outcome is Outcome.OK)
        self.end(
            fault,
            f"paused {time.monotonic() - started:.1f}s; {served}/{len(got)} direct reads "
            f"served by the old leader, {stale} of them stale",
        )

    async def _pause_target(
        self, why: str, pause_for: float | None
    ) -> tuple[int, int, Child, float]:
        """After a probe write: (range id, leaseholder, its process, pause length)."""
        await self.probe_write(why)
        rid, holder = await self.replicas.wait_leaseholder_of(PROBE_KEY, 20, interval=0.1)
        pause = pause_for if pause_for is not None else self.rng.uniform(2.5, 4.0)
        return rid, holder, self.cluster.node(holder), pause

    def _probe_read(
        self, stub: replica_pb2_grpc.ReplicaStub, rid: int, timeout: float
    ) -> asyncio.Future[Operation]:
        """A recorded GET of the probe key sent straight to one node (no routing)."""
        return asyncio.ensure_future(
            direct_op(
                self.kv,
                next(self.probe_cid),
                stub,
                rid,
                OpKind.GET,
                PROBE_KEY,
                timeout=timeout,
            )
        )

    async def fault_isolate_write(self) -> Operation:
        """Stop every other raftnode, write straight to the leaseholder, kill it, resume;
        restart it only once the others hold the range's lease without it (so a write it
        acknowledged alone is lost for good in a broken build, instead of coming back
        with its log: quiesced followers take a liveness lapse to notice it died)."""
        await self.probe_write("before the isolation")
        rid, holder = await self.replicas.wait_leaseholder_of(PROBE_KEY, 20, interval=0.1)
        child = self.cluster.node(holder)
        others = [n for n in self.cluster.nodes if n is not child and alive(n)]
        async with chaos_tls.channel(child.address) as ch:
            stub = replica_pb2_grpc.ReplicaStub(ch)
            await stub.RangeInfo(replica_pb2.RangeInfoRequest(), timeout=2)
            fault = self.begin(
                "isolate+kill -9", child.name, f"leaseholder of range {rid}; others stopped"
            )
            for other in others:
                self.cluster.pause(other)
            try:
                self.probe_n += 1
                op = await direct_op(
                    self.kv,
                    next(self.probe_cid),
                    stub,
                    rid,
                    OpKind.PUT,
                    PROBE_KEY,
                    b"p%d" % self.probe_n,
                    timeout=1.5,
                )
                await self.kill9(child)
            finally:
                for other in others:
                    self.cluster.resume(other)
        try:
            _rid, successor = await self.replicas.wait_leaseholder_of(
                PROBE_KEY, 20, exclude=holder, interval=0.1
            )
            took = f"node {successor} took the lease"
        except TimeoutError:
            took = "no other leaseholder within 20s"
        await self.restart(child)
        self.end(fault, f"isolated write {op.outcome.value}; {took}; restarted")
        return op

    async def _other_voter(self, rid: int, holder: int) -> int:
        """A voter of range `rid` other than node `holder`, drawn from the nemesis's rng
        (in node order, so a seed draws the same node while the voters are the same)."""
        others = sorted(n for n in await self.replicas.voters(rid) if n != holder)
        if not others:
            raise TimeoutError(f"range {rid}: no voter besides node {holder}")
        return self.rng.choice(others)

    async def fault_transfer(self) -> None:
        key = self.rng.choice([*REG_KEYS, PROBE_KEY, *SCAN_KEYS[::10]])
        rid, holder = await self.replicas.owner(key)
        if holder is None:
            raise TimeoutError(f"range {rid} has no leader")
        target = await self._other_voter(rid, holder)
        fault = self.begin("transfer", f"range {rid}", f"node {holder} -> node {target}")
        resp = await self.replicas.call(
            holder,
            "TransferLease",
            replica_pb2.TransferLeaseRequest(range_id=rid, target_node_id=target),
        )
        err = error_text(resp)
        self.end(fault, err)

    async def fault_split(self) -> None:
        key = self.rng.choice(SPLIT_CANDIDATES)
        rid, holder = await self.replicas.owner(key)
        if holder is None:
            raise TimeoutError(f"range {rid} has no leader")
        fault = self.begin("split", f"range {rid}", f"at {key!r} on node {holder}")
        resp = await self.replicas.call(
            holder,
            "AdminSplit",
            replica_pb2.AdminSplitRequest(range_id=rid, split_key=key),
            timeout=20,
        )
        err = error_text(resp)
        self.end(fault, err)

    async def split_at(self, key: bytes, wait: float = 15.0) -> str:
        """Split the range holding `key` at `key` (AdminSplit on its leaseholder),
        waiting up to `wait` seconds for the range to have a leader."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        rid, holder = await self.replicas.owner(key)
        while holder is None and loop.time() < deadline:
            await asyncio.sleep(0.1)
            rid, holder = await self.replicas.owner(key)
        if holder is None:
            raise TimeoutError(f"range {rid} has no leader")
        resp = await self.replicas.call(
            holder,
            "AdminSplit",
            replica_pb2.AdminSplitRequest(range_id=rid, split_key=key),
            timeout=20,
        )
        return error_text(resp)

    async def restart_with_clock(self, child: Child, offset_ms: float) -> None:
        """kill -9, then start `child` again with its wall clock off by `offset_ms`
        (RANGEKV_TEST_CLOCK_OFFSET_MS, read once at start)."""
        env = dict(child.env)
        if offset_ms:
            env[CLOCK_ENV] = f"{offset_ms:g}"
        else:
            env.pop(CLOCK_ENV, None)
        child.env = env
        await self.kill9(child)
        await self.restart(child)

    async def fault_refuse_raft(self) -> None:
        """One raftnode refuses every raft stream and snapshot sent to it for a few
        seconds, then accepts again, in the same processes (see the module
        docstring). It hears no peer meanwhile: its leases move away and its
        replicas fall behind. Its peers must count refused streams (a fault that saw
        none is a problem of the run: the fault did not happen) and, once it
        accepts again, their lanes must recover: every replica must catch up within
        the catch-up budget (a lane that never sends again -- the hang a gRPC reader
        stuck in a refused call once caused -- leaves them behind for good)."""
        node_id = self.rng.choice(self.cluster.node_ids)
        child = self.cluster.node(node_id)
        marker = refuse_raft_marker(self.cfg, node_id)
        hold = self.rng.uniform(2.0, 4.0)
        fault = self.begin("refuse-raft", child.name, f"refuses raft streams for {hold:.1f}s")
        metric, code = "rangekv_raft_dispatch_errors_total", "permission_denied"
        before = await self.c.node_counts(metric, exclude=child, code=code)
        marker.touch()
        try:
            await asyncio.sleep(hold)  # pacing: the refusal lasts this long
        finally:
            marker.unlink(missing_ok=True)
        after = await self.c.node_counts(metric, exclude=child, code=code)
        both = before.keys() & after.keys()
        refused = sum(after[n] - before[n] for n in both)
        if both:
            self.refuse_faults += 1
            self.raft_refusals += refused
            if refused == 0:
                self.raft_unrefused.append(f"{fault.target} at {fault.start:.1f}s")
        behind = await self.replicas.lagging(self.cfg.catch_up_budget)
        self.left_behind += [f"{fault.target} at {fault.start:.1f}s: {b}" for b in behind]
        self.end(
            fault,
            f"peers counted {refused} refused streams; "
            + (f"{len(behind)} replicas still behind" if behind else "every replica caught up"),
        )

    async def fault_clock(self, beyond: bool | None = None) -> None:
        """Move one raftnode's clock: within 80% of the maximum offset (nothing may
        break), or, one time in four (`beyond`: always / never), 2.5 times beyond it
        for a few seconds: its peers must refuse its raft traffic (counted; a fault
        that saw no refusal is a problem of the run), never follow its clock."""
        child = self.rng.choice(self.cluster.nodes)
        if beyond is None:
            beyond = self.rng.random() < 0.25
        if beyond:
            offset = 2.5 * MAX_OFFSET_MS
        else:
            # The bound is on any two clocks of the cluster: each within 40% of the
            # true time keeps every pair within 80% of it, however the faults add up
            # (offsets within the bound stay until the node is moved again).
            offset = round(self.rng.uniform(-0.4, 0.4) * MAX_OFFSET_MS)
        fault = self.begin("clock", child.name, f"offset {offset:+.0f} ms")
        refused_before = await self.c.refusals("clock_offset", exclude=child)
        await self.restart_with_clock(child, offset)
        if not beyond:
            self.end(fault, "within the bound")
            return
        await asyncio.sleep(self.rng.uniform(3.0, 5.0))  # the fault's duration
        refused_after = await self.c.refusals("clock_offset", exclude=child)
        await self.restart_with_clock(child, 0)
        both = refused_before.keys() & refused_after.keys()
        if not both:
            self.end(fault, "beyond the bound: no peer's metrics answered; clock restored")
            return
        refused = sum(refused_after[n] - refused_before[n] for n in both)
        self.clock_refusals += refused
        self.clock_beyond += 1
        if refused == 0:
            self.clock_unrefused.append(f"{fault.target} at {fault.start:.1f}s")
        self.end(
            fault,
            f"beyond the bound: refused {refused} times by {len(both)} peers; clock restored",
        )

    async def fault_snapshot_race(self) -> None:
        """A follower is down long enough to need a snapshot (logs keep 20 entries),
        comes back, and the lease moves away at once: the old leaseholder may
        still be streaming its snapshot while the new one catches the follower up.
        (A paused follower would not do: the leader keeps streaming appends into
        its socket, and it catches up from them; a dead one misses them.)"""
        key = self.rng.choice(REG_KEYS)
        rid, holder = await self.replicas.owner(key)
        if holder is None:
            raise TimeoutError(f"range {rid} has no leader")
        voters = await self.replicas.voters(rid)
        followers = [n for n in voters if n != holder]
        if len(followers) < 2:
            raise TimeoutError(f"range {rid} has fewer than 3 voters")
        lagging, target = self.rng.sample(followers, 2)
        child = self.cluster.node(lagging)
        down = self.rng.uniform(1.5, 3.0)
        fault = self.begin(
            "snapshot-race",
            f"range {rid}",
            f"node {lagging} down {down:.1f}s, then lease {holder} -> {target}",
        )
        await self.kill9(child)
        for _ in range(25):  # more log than the 20 entries kept
            await self.write_key(key)
        await asyncio.sleep(down)
        await self.restart(child)
        resp = await self.replicas.call(
            holder,
            "TransferLease",
            replica_pb2.TransferLeaseRequest(range_id=rid, target_node_id=target),
        )
        err = error_text(resp)
        self.end(fault, f"transfer: {err}")

    async def move_lease(self, rid: int, target: int, timeout: float = 20.0) -> None:
        """Transfer range `rid`'s lease to node `target` and wait until it holds it."""
        await self.replicas.transfer_lease(rid, target, timeout=timeout)

    async def slow_snapshot_race(self, key: bytes) -> Fault:
        """A stale snapshot arrives after its follower was caught up another way.

        The leaseholder L of `key`'s range is restarted so that it sends every
        snapshot slowly (RANGEKV_TEST_SNAPSHOT_DELAY_MS) and takes the lease back;
        a follower F is down until it needs a snapshot (L's and M's logs were
        truncated past everything F held), and restarts: L starts streaming. The
        lease moves to the third voter M at once, which catches F up (its own
        snapshot, then its log) while recorded writes of `key` are acknowledged;
        then L's stale stream completes (F logs what it did with it). The lease goes
        to F and `key` is read through the gateways: a replica that ingested the
        stale stream answers an overwritten value (the checker must say so).

        Every step waits for what it needs, observed; L runs with slow snapshots only
        inside this fault, also when a step times out (a retry starts clean)."""

        async def led() -> tuple[int, int] | None:
            rid, holder = await self.replicas.owner(key)
            return (rid, holder) if holder is not None else None

        # Right after other faults (leaseholders killed one after another) the range
        # may be between leaders: wait for one, observed, rather than give up at once.
        rid, holder = await async_wait_for(led, 20.0, f"a leader of the range of {key!r}", 0.1)
        voters = await self.replicas.voters(rid)
        if len(voters) < 3:
            raise TimeoutError(f"range {rid}: fewer than 3 voters")
        lead, lagging, other = holder, *[n for n in voters if n != holder][:2]
        fault = self.begin(
            "slow-snapshot-race",
            f"range {rid}",
            f"L=node {lead} (slow snapshots), F=node {lagging}, M=node {other}",
        )
        slow = self.cluster.node(lead)
        slow.env = {**slow.env, SNAPSHOT_DELAY_ENV: "3000"}
        try:
            stale = await self._stale_snapshot_steps(rid, key, slow, lead, lagging, other)
        finally:
            slow.env = {k: v for k, v in slow.env.items() if k != SNAPSHOT_DELAY_ENV}
            await self.kill9(slow)
            await self.restart(slow)
        self.race_stale_reads += stale
        self.end(
            fault,
            f"read through the gateways after the lease moved to F: {stale} of them "
            "answered other than the last acknowledged write",
        )
        return fault

    async def _stale_snapshot_steps(
        self, rid: int, key: bytes, slow: Child, lead: int, lagging: int, other: int
    ) -> int:
        """slow_snapshot_race's steps, with L (`slow`) already set to stream slowly;
        returns how many of the final reads answered other than the last write
        acknowledged before them (only this fault writes `key`: in a correct build,
        none)."""
        await self.kill9(slow)
        await self.restart(slow)
        await self.move_lease(rid, lead)
        follower = self.cluster.node(lagging)
        await self.kill9(follower)  # dead, not paused: it must miss the appends
        # F held at most what was committed now plus what was in flight; once L and M
        # keep no entry up to a margin past that, F can only be caught up by a snapshot.
        infos = await self.replicas.range_infos(rid, (lead, other))
        if len(infos) != 2:
            raise TimeoutError(f"range {rid}: L or M did not answer RangeInfo")
        beyond = max(i.commit_index for i in infos) + 10

        async def truncated_past_f() -> bool:
            infos = await self.replicas.range_infos(rid, (lead, other))
            if len(infos) == 2 and all(i.log_first_index > beyond for i in infos):
                return True
            await self.write_key(key)  # more log to truncate
            return False

        await async_wait_for(truncated_past_f, 30, f"L and M to truncate past index {beyond}")
        mark = slow.log_path.stat().st_size
        f_mark = follower.log_path.stat().st_size
        await self.restart(follower)
        started = re.compile(
            rb"snapshot of group %d for replica \d+: streaming state at applied (\d+)" % rid
        )

        async def streaming() -> bytes | None:
            with slow.log_path.open("rb") as f:
                f.seek(mark)
                m = started.search(f.read())
            return m.group(1) if m else None

        applied = await async_wait_for(streaming, 15, "L to start its slow snapshot to F", 0.05)
        await self.move_lease(rid, other)
        for _ in range(3):
            last = await self.write_key(key)
        # F logs what it did with every snapshot it received, naming its applied index.
        landed = re.compile(rb"snapshot of group %d: .*state at applied %s\b" % (rid, applied))

        async def stale_stream_landed() -> bool:
            with follower.log_path.open("rb") as f:
                f.seek(f_mark)
                return landed.search(f.read()) is not None

        await async_wait_for(stale_stream_landed, 20, "L's stale snapshot to reach F", 0.05)
        await self.move_lease(rid, lagging)
        stale = 0
        for _ in range(4):
            op = await self.kv.op(
                next(self.probe_cid), self.rng.choice(self.stubs), OpKind.GET, key
            )
            if op.outcome is Outcome.OK and last.outcome is Outcome.OK and op.read != last.value:
                stale += 1
        return stale

    async def write_key(self, key: bytes) -> Operation:
        """A recorded PUT of a fresh value of `key` through a gateway."""
        self.probe_n += 1
        return await self.kv.op(
            next(self.probe_cid),
            self.rng.choice(self.stubs),
            OpKind.PUT,
            key,
            b"w%d" % self.probe_n,
        )

    async def _change(
        self,
        holder: int,
        rid: int,
        generation: int,
        node: int,
        *types: replica_pb2.ReplicaChangeType,
    ) -> tuple[int, str]:
        """One ChangeReplicas on node `holder`: (the new generation or 0, what happened)."""
        changes = [replica_pb2.ReplicaChange(type=t, node_id=node) for t in types]
        resp = await self.replicas.call(
            holder,
            "ChangeReplicas",
            replica_pb2.ChangeReplicasRequest(
                range_id=rid, expected_generation=generation, changes=changes
            ),
            timeout=45,
        )
        if resp.HasField("error"):
            return 0, error_text(resp)
        return resp.descriptor.generation, "ok"

    async def fault_change_replicas(self) -> None:
        """A replica change of a random range in the middle of the traffic: add a replica
        on a node without one (learner, catch-up, promotion) and remove another voter;
        where every node already holds the range, remove a voter and add it back."""
        key = self.rng.choice([*REG_KEYS, PROBE_KEY, *SCAN_KEYS[::10]])
        rid, holder = await self.replicas.wait_leaseholder_of(key, LEASEHOLDER_WAIT)
        infos = await self.replicas.infos(holder, [rid])
        if not infos:
            raise TimeoutError(f"node {holder} no longer holds range {rid}")
        desc = infos[0].descriptor
        members = [r.node_id for r in desc.replicas]
        usable = [n for n in self.cluster.node_ids if self.cluster.usable(self.cluster.node(n))]
        spare = [n for n in self.cluster.node_ids if n not in members and n in usable]
        others = [n for n in members if n != holder]
        add_types = (
            replica_pb2.REPLICA_CHANGE_TYPE_ADD_LEARNER,
            replica_pb2.REPLICA_CHANGE_TYPE_PROMOTE_VOTER,
        )
        remove = replica_pb2.REPLICA_CHANGE_TYPE_REMOVE
        if spare:
            new, victim = self.rng.choice(spare), self.rng.choice(others)
            plan = [(new, add_types), (victim, (remove,))]
            what = f"add node {new}, then remove node {victim}"
        elif others:
            victim = self.rng.choice(others)
            plan = [(victim, (remove,)), (victim, add_types)]
            what = f"remove node {victim}, then add it back"
        else:
            raise TimeoutError(f"range {rid} has no replica to change")
        fault = self.begin("change-replicas", f"range {rid}", f"{what} (via node {holder})")
        generation, steps = desc.generation, []
        try:
            for node, types in plan:
                generation, outcome = await self._change(holder, rid, generation, node, *types)
                steps.append(outcome)
                if not generation:
                    break
        except grpc.aio.AioRpcError as err:
            steps.append(f"rpc failed: {err.code().name}")
        self.end(fault, "; ".join(steps))

    def _lab(self) -> NetLab:
        if self.c.lab is None:
            raise TimeoutError("partitions unavailable (no network namespaces)")
        return self.c.lab

    async def fault_partition_leaseholder(self) -> None:
        """Cut every raft link of a range's leaseholder (gateways still reach it) past the
        lease and the election timeout, then heal."""
        lab = self._lab()
        key = self.rng.choice([*REG_KEYS, PROBE_KEY, *SCAN_KEYS[::10]])
        rid, holder = await self.replicas.wait_leaseholder_of(key, LEASEHOLDER_WAIT)
        hold = self.rng.uniform(2.5, 5.0)
        fault = self.begin(
            "partition-leaseholder",
            f"raftnode {holder}",
            f"leaseholder of range {rid} cut from its raft peers for {hold:.1f}s",
        )
        started = time.monotonic()
        lab.isolate(holder)
        try:
            try:
                _rid, new = await self.replicas.wait_leaseholder_of(
                    key, hold, exclude=holder, interval=0.2
                )
                moved = f"node {new} took the lease after {time.monotonic() - started:.1f}s"
            except TimeoutError:
                moved = "no other leaseholder seen while cut"
            await asyncio.sleep(max(0.0, hold - (time.monotonic() - started)))  # pacing
        finally:
            lab.heal()
        self.end(fault, f"{moved}; healed")

    async def fault_lost_transfer(self) -> None:
        """A leadership transfer whose TIMEOUT_NOW is lost. On an idle range (the one
        holding LOST_TRANSFER_KEY, which no client writes), wait until a follower has
        the whole log, cut it off, and ask the leaseholder to hand it the lease: the
        target is caught up, so TIMEOUT_NOW leaves at once, into the cut. From then
        on the leader's lease is void (a late TIMEOUT_NOW could still win a forced
        election). Once the transfer is abandoned the range must hold a valid lease
        again, in a later term; a range left without one is a problem of the run (a
        leader leading on without a lease while its followers, hearing it, never
        end the term)."""
        lab = self._lab()
        key = LOST_TRANSFER_KEY
        split = await self.split_at(key)
        rid, holder = await self.replicas.wait_leaseholder_of(key, LEASEHOLDER_WAIT)
        before = await self.replicas.info(holder, rid)
        if before is None or not before.lease_valid:
            raise TimeoutError(f"range {rid}: node {holder} no longer holds the lease")
        target = await self._other_voter(rid, holder)

        async def caught_up() -> bool:
            info = await self.replicas.info(target, rid)
            return info is not None and info.applied_index >= before.commit_index

        await async_wait_for(caught_up, 10, f"node {target} to hold range {rid}'s log", 0.1)
        fault = self.begin(
            "lost-transfer",
            f"range {rid}",
            f"node {holder} -> node {target}, cut off once caught up ({split} at {key!r})",
        )
        started = time.monotonic()
        lab.isolate(target)
        try:
            # The node answers once the lease moved or its transfer timeout (5 s)
            # passed; the lease is watched meanwhile.
            asked = asyncio.ensure_future(
                self.replicas.call(
                    holder,
                    "TransferLease",
                    replica_pb2.TransferLeaseRequest(range_id=rid, target_node_id=target),
                    timeout=LOST_TRANSFER_LEASE_WAIT,
                )
            )

            async def regained() -> replica_pb2.ReplicaInfo | None:
                for node in self.cluster.node_ids:
                    info = None if node == target else await self.replicas.info(node, rid)
                    if info and info.lease_valid and info.lease_sequence > before.lease_sequence:
                        return info
                return None

            try:
                info = await async_wait_for(
                    regained, LOST_TRANSFER_LEASE_WAIT, "a lease in a later term", 0.1
                )
                outcome = (
                    f"a lease again in term {info.lease_sequence} (was {before.lease_sequence}) "
                    f"{time.monotonic() - started:.1f}s after the request"
                )
            except TimeoutError:
                outcome = f"no valid lease in a later term within {LOST_TRANSFER_LEASE_WAIT:.0f}s"
                self.leases_not_regained.append(f"range {rid} at {fault.start:.1f}s")
            try:
                answer = error_text(await asked)
            except grpc.aio.AioRpcError as err:
                answer = f"rpc failed: {err.code().name}"
        finally:
            lab.heal()
        self.end(fault, f"{outcome}; transfer: {answer}; healed")

    async def fault_partition_halves(self) -> None:
        """Split the raftnodes into a minority and a majority for a while, then heal."""
        lab = self._lab()
        nodes = list(self.cluster.node_ids)
        self.rng.shuffle(nodes)
        minority = sorted(nodes[: self.rng.choice([1, 2])])
        majority = sorted(n for n in nodes if n not in minority)
        hold = self.rng.uniform(2.5, 5.0)
        fault = self.begin(
            "partition-halves", "raftnodes", f"{minority} | {majority} for {hold:.1f}s"
        )
        lab.split(minority)
        try:
            await asyncio.sleep(hold)  # pacing: the partition lasts this long
        finally:
            lab.heal()
        self.end(fault, "healed")

    async def fault_partition_pause(self, pause_for: float | None = None, reads: int = 8) -> int:
        """The stale-leader read, made certain: cut the probe key's leaseholder from its
        raft peers (its root link stays up), SIGSTOP it, wait until another node holds
        the lease and a fresh probe write is acknowledged, SIGCONT it and read the
        probe key straight from it. Cut off, it cannot hear the new term: a correct
        build refuses (its lease expired and a read-index finds no quorum), a build
        that skips the lease check answers the overwritten value. Returns the number
        of stale reads (reads of a value other than the fresh one that it served)."""
        lab = self._lab()
        rid, holder, child, pause_for = await self._pause_target("before the partition", pause_for)
        async with chaos_tls.channel(child.address) as ch:
            stub = replica_pb2_grpc.ReplicaStub(ch)
            await stub.RangeInfo(replica_pb2.RangeInfoRequest(), timeout=2)  # connect now
            fault = self.begin(
                "partition+pause",
                child.name,
                f"leaseholder of range {rid}: raft links cut, then SIGSTOP",
            )
            started = time.monotonic()
            lab.isolate(holder)
            got: list[Operation] = []
            try:
                self.cluster.pause(child)
                try:
                    fresh = await self.probe_write_direct(holder)
                    queued = [
                        self._probe_read(stub, rid, pause_for + 15) for _ in range(reads // 2)
                    ]
                    await asyncio.sleep(max(0.3, pause_for - (time.monotonic() - started)))
                finally:
                    self.cluster.resume(child)
                resumed = [
                    self._probe_read(stub, rid, pause_for + 15) for _ in range(reads - reads // 2)
                ]
                got = list(await asyncio.gather(*queued, *resumed))
            finally:
                lab.heal()
        served = [op for op in got if op.outcome is Outcome.OK]
        stale = sum(1 for op in served if op.read != fresh.value)
        self.end(
            fault,
            f"paused {pause_for:.1f}s; {len(served)}/{len(got)} direct reads served by the "
            f"old leaseholder, {stale} of them stale; healed",
        )
        return stale


# ----------------------------------------------------------------------------- the run


@contextlib.asynccontextmanager
async def network_lab(cfg: ChaosConfig) -> AsyncIterator[tuple[NetLab | None, str]]:
    """The namespaces for the run (always removed afterwards), or None and why not."""
    if not cfg.partitions:
        yield None, "disabled in ChaosConfig"
        return
    lab, why = try_netlab(range(1, cfg.n_nodes + 1))
    if lab is None:
        print(f"chaos harness: partitions: unavailable ({why})", file=sys.stderr)
        yield None, why
        return
    atexit.register(lab.cleanup)  # also on an interpreter exit mid-run
    try:
        yield lab, ""
    finally:
        lab.cleanup()
        atexit.unregister(lab.cleanup)


def refuse_raft_marker(cfg: ChaosConfig, node_id: int) -> Path:
    """While this file exists, raftnode `node_id` refuses raft streams (fault_refuse_raft)."""
    return (cfg.report_dir / f"refuse-raft-node{node_id}").resolve()


@contextlib.asynccontextmanager
async def started_cluster(cfg: ChaosConfig, lab: NetLab | None) -> AsyncIterator[Cluster]:
    """The kit's cluster in the run's sync mode (mutual TLS with the suite's
    certificates), its raftnodes in their namespaces when there are any; killed
    afterwards whatever happened."""
    node_env: dict[str, str] = {}
    if cfg.mutation:
        node_env["RANGEKV_TEST_MUTATION"] = cfg.mutation
    if cfg.power_loss and cfg.sync_mode == "nosync":
        node_env[POWER_LOSS_ENV] = "1"
    spec = ClusterSpec(
        n_meta=cfg.n_meta,
        n_nodes=cfg.n_nodes,
        n_gateways=cfg.n_gateways,
        # Every range on every node, as the faults assume (a fault's target may be any
        # other node) and as the first range starts; the rebalancer would otherwise
        # trim each range to the default factor of 3 in the middle of the faults.
        node_args=(*NODE_ARGS, "--replication-factor", str(cfg.n_nodes)),
        env={"RANGEKV_FSM_SYNC_MODE": cfg.sync_mode},
        # Every raftnode is armed for refuse_raft: inert until its marker file exists.
        node_env={
            n: {**node_env, REFUSE_RAFT_ENV: str(refuse_raft_marker(cfg, n))}
            for n in range(1, cfg.n_nodes + 1)
        },
        certs_dir=chaos_tls.certs_dir(),
    )
    cluster = Cluster(cfg.report_dir / "cluster", spec)
    if lab is not None:
        place_in_namespaces(cluster, lab)
    try:
        await cluster.start()
        yield cluster
    finally:
        await cluster.close()


async def final_reads(kv: RecordedKV, budget: float = 120.0) -> list[str]:
    """Recorded reads of every key through each KV endpoint (the gateways, then the
    raftnodes the workload used), and a full scan through each.

    All of it within `budget` seconds: a cluster that cannot answer is reported as
    a problem of the run, not left to the test's timeout (which reports nothing)."""
    problems = []
    deadline = time.monotonic() + budget
    for g, stub in enumerate(kv.stubs):
        for key in [*REG_KEYS, PROBE_KEY]:
            left = min(30.0, deadline - time.monotonic())
            try:
                if left <= 0:
                    raise TimeoutError
                await kv.read_until_ok(800 + g, stub, key, timeout=left, interval=0.5)
            except TimeoutError:
                problems.append(f"endpoint {g + 1}: no final read of {key!r} succeeded")
        try:
            keys = await scan_keys(stub)
        except grpc.aio.AioRpcError as err:
            problems.append(f"endpoint {g + 1}: final scan failed: {err.code().name}")
            continue
        problem = ordering_problem(keys)
        if problem is None and [k for k in keys if k.startswith(b"s/")] != SCAN_KEYS:
            problem = "never-deleted keys missing"
        if problem:
            problems.append(f"endpoint {g + 1}: final scan: {problem}")
    return problems


async def wait_healthy(stubs: list[kv_pb2_grpc.KVStub], timeout: float = 60) -> None:
    """Until every KV endpoint serves a read; TimeoutError naming the first that
    did not (endpoint N: the gateways, then the raftnodes, as in the report)."""
    failing = [0]

    async def ok() -> bool:
        for n, kv in enumerate(stubs, 1):
            try:
                await kv.Get(kv_pb2.GetRequest(key=b"health"), timeout=5)
            except grpc.aio.AioRpcError:
                failing[0] = n
                return False
        return True

    await async_wait_for(
        ok, timeout, "every KV endpoint to serve reads", 0.5, seen=lambda: f"endpoint {failing[0]}"
    )


Schedule = Callable[[Nemesis], Awaitable[None]]


def refused_as_invalid(stats: WorkloadStats) -> list[str]:
    """Every operation of the run is well formed, so an INVALID_ARGUMENT answer is a
    wrong answer: a valid request refused as if the client had erred (the chaos
    workload once saw hundreds: GETs merged into a batch with a scan's fence)."""
    counts = {
        what: n
        for what, n in [*stats.errors.items(), *stats.scan_errors.items()]
        if what.endswith(("INVALID_ARGUMENT", "InvalidArgument"))
    }
    if not counts:
        return []
    said = [m for m in stats.messages if m.startswith("INVALID_ARGUMENT")][:3]
    return [f"valid operations refused as invalid: {counts}; {said}"]


class ChecksumWatch:
    """Replica checksums sampled while the nemesis runs, into the ledger the final
    divergence check continues (`Replicas.diverged`).

    The final check compares replicas once writes have stopped; a divergence that
    a later fault repaired (a snapshot or a replica change replacing the diverged
    replica) is gone by then. Polls during the run file every replica's checksum
    under (range, applied index), so two replicas that ever stood at one index
    with different states are reported. Paused and dead nodes are not asked."""

    def __init__(self, replicas: Replicas) -> None:
        self.replicas = replicas
        self.ledger = ChecksumLedger()
        self.polls = 0

    async def run(self) -> None:
        while True:
            await self.replicas.record_checksums(self.ledger)
            self.polls += 1
            await asyncio.sleep(CHECKSUM_POLL)  # a sampling period, not a wait for anything


async def run_chaos_async(cfg: ChaosConfig, schedule: Schedule | None = None) -> ChaosResult:
    """One run; `schedule` replaces the random nemesis (the mutation tests use it)."""
    cfg.report_dir.mkdir(parents=True, exist_ok=True)
    wall0 = time.monotonic()
    problems: list[str] = []
    async with network_lab(cfg) as (lab, no_lab_reason), started_cluster(cfg, lab) as cluster:
        startup = time.monotonic() - wall0
        # The KV endpoints, in the order of the report's positions (1-based).
        endpoints = [*cluster.gateways, *cluster.nodes[: cfg.n_node_endpoints]]
        names = [child.name for child in endpoints]
        channels = [chaos_tls.channel(child.address) for child in endpoints]
        stubs = [kv_pb2_grpc.KVStub(ch) for ch in channels]
        gateways = stubs[: len(cluster.gateways)]
        workload = Workload(workload_spec(cfg), stubs)
        try:
            await wait_healthy(workload.kv.stubs)
            await workload.load()
            t0 = time.monotonic()
            # The nemesis's own probes go through the gateways only.
            probes = RecordedKV(
                gateways, workload.kv.rec, workload.kv.stats, timeout=workload.kv.timeout
            )
            nemesis = Nemesis(ChaosCluster(cluster, lab), cfg, probes, t0)
            watch = ChecksumWatch(Replicas(cluster))
            for key in REG_SPLITS:  # the snapshot scans span ranges from the start
                split = await nemesis.split_at(key)
                nemesis.faults.append(
                    Fault("split", "setup", 0.0, nemesis.now(), f"{key!r}: {split}")
                )
            workload.start()
            watch_task = asyncio.create_task(watch.run())
            try:
                if schedule is None:
                    await nemesis.run(t0 + cfg.duration)
                else:
                    await schedule(nemesis)
            finally:
                watch_task.cancel()
                await asyncio.gather(watch_task, return_exceptions=True)
                await nemesis.heal()
                await workload.stop()
            workload_s = time.monotonic() - t0
            try:
                await wait_healthy(workload.kv.stubs)
            except TimeoutError as exc:  # e.g. a process that did not restart: say which
                problems.append(f"after the heal: {exc}")
            else:
                problems += await final_reads(workload.kv)
                problems += [
                    f"a replica did not catch up after the heal: {line}"
                    for line in await Replicas(cluster).lagging(cfg.catch_up_budget)
                ]
                problems += [
                    f"replicas of a range diverged: {line}"
                    for line in await watch.replicas.diverged(cfg.catch_up_budget, watch.ledger)
                ]
                async with MetaReplicas(cluster) as meta:
                    problems += [
                        f"replicas of the meta range diverged: {line}"
                        for line in await meta.diverged(cfg.catch_up_budget)
                    ]
            for what, found in (
                (
                    "no peer refused raft traffic from a clock beyond the bound",
                    nemesis.clock_unrefused,
                ),
                (
                    "no valid lease in a later term after a lost transfer",
                    nemesis.leases_not_regained,
                ),
                (
                    "no peer counted a refused raft stream of a refusing node",
                    nemesis.raft_unrefused,
                ),
                (
                    "a replica did not catch up after its node accepted raft again",
                    nemesis.left_behind,
                ),
            ):
                problems += [f"{what}: {where}" for where in found]
            problems += refused_as_invalid(workload.kv.stats)
            if workload_s >= 20:  # long enough that a paused node still served some
                problems += [
                    f"{name}'s KV API acknowledged no operation of the workload"
                    for at, name in enumerate(names, 1)
                    if at > len(gateways) and not workload.kv.stats.acknowledged_at[at]
                ]
        except BaseException:
            (cfg.report_dir / "log_tails.txt").write_text(cluster.log_tails(25))
            raise
        finally:
            for ch in channels:
                await ch.close()
        if problems:
            (cfg.report_dir / "log_tails.txt").write_text(cluster.log_tails(25))

    ops = workload.operations()
    stats = workload.stats
    history_file = cfg.report_dir / "history.json"
    save_history(history_file, ops)
    result = check_history(ops, timeout=cfg.check_timeout)
    problems += stats.scan_failures[:20]
    report: dict[str, Any] = {
        "seed": cfg.seed,
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(cfg).items()},
        "partitions": partitions_text(lab, no_lab_reason),
        "seconds": {
            "startup": round(startup, 1),
            "workload": round(workload_s, 1),
            "total": round(time.monotonic() - wall0, 1),
            "check": round(result.elapsed, 2),
        },
        "operations": len(ops),
        "by_outcome": dict(stats.outcomes),
        #: Acknowledged operations by KV endpoint (the gateways, then raftnodes 1, 2, ...).
        "acknowledged_at": {names[at - 1]: n for at, n in sorted(stats.acknowledged_at.items())},
        "by_kind": dict(sorted(stats.by_kind.items())),
        "errors": dict(stats.errors.most_common(12)),
        #: What the commonest errors said (status: details), to read a cause off the report.
        "error_messages": dict(stats.messages.most_common(12)),
        "clock_refusals": nemesis.clock_refusals,
        "clock_beyond_faults": nemesis.clock_beyond,
        "race_stale_reads": nemesis.race_stale_reads,
        "overload_faults": nemesis.overloads,
        "overload_refusals": nemesis.overload_refusals,
        "refuse_raft_faults": nemesis.refuse_faults,
        "raft_refusals": nemesis.raft_refusals,
        "scans": {
            "snapshot_scans_ok": stats.snapshot_scans,
            "complete_ok": stats.scans_ok,
            "partial": stats.scans_partial,
            "errors": dict(stats.scan_errors),
            "failures": stats.scan_failures[:20],
        },
        "faults": [asdict(f) for f in nemesis.faults],
        "checksums": {
            "polls_during_run": watch.polls,
            #: (range, applied index) pairs at which two replicas or more were compared.
            "compared": watch.ledger.comparisons(),
        },
        "checker": {
            "ok": result.ok,
            "keys_checked": result.keys_checked,
            "failed_key": result.failed_key.decode(errors="replace") if result.failed_key else None,
            "explanation": result.explanation,
            "seconds": round(result.elapsed, 2),
        },
        "problems": problems,
        "history": str(history_file),
        "replay": (
            f"python tests/chaos/harness.py check {history_file}   # re-judge this history; "
            f"RANGEKV_CHAOS_SEED={cfg.seed} re-runs the same nemesis schedule"
        ),
    }
    (cfg.report_dir / "report.json").write_text(json.dumps(report, indent=1, default=str) + "\n")
    (cfg.report_dir / "summary.txt").write_text(summary_text(report) + "\n")
    return ChaosResult(result.ok, result.explanation, report, cfg.report_dir, ops, problems)


def run_chaos(cfg: ChaosConfig, schedule: Schedule | None = None) -> ChaosResult:
    """One run on an event loop of its own.

    The chaos tests stay synchronous and call this: pytest-asyncio marks every
    `async def` test `asyncio`, and `-k` matches markers, so the documented
    selections (`-k "test_chaos and sync and not nosync"`) would pick every test
    of the module."""
    return asyncio.run(run_chaos_async(cfg, schedule))


def partitions_text(lab: NetLab | None, reason: str) -> str:
    if lab is None:
        return f"unavailable ({reason}); no partition faults injected"
    return (
        f"network namespaces: raftnodes at 10.{lab.octet}.0.N, host 10.{lab.octet}.255.1, "
        f"full veth mesh, links cut by the nemesis"
    )


def summary_text(report: dict[str, Any]) -> str:
    cfg = report["config"]
    faults = Counter(f["kind"] for f in report["faults"] if not f["detail"].startswith("skipped"))
    skipped = Counter(f["kind"] for f in report["faults"] if f["detail"].startswith("skipped"))
    verdict = {True: "LINEARIZABLE", False: "NOT LINEARIZABLE", None: "UNDECIDED"}[
        report["checker"]["ok"]
    ]
    lines = [
        f"chaos run seed={report['seed']} sync_mode={cfg['sync_mode']} "
        f"mutation={cfg['mutation'] or 'none'} "
        f"cluster={cfg['n_meta']} meta/{cfg['n_nodes']} nodes/{cfg['n_gateways']} gateways",
        f"time: {report['seconds']}",
        f"operations: {report['operations']} {report['by_outcome']}; acknowledged through "
        f"{report['acknowledged_at']}",
        f"faults: {dict(faults)}, skipped {dict(skipped)} (partitions: {report['partitions']})",
        f"scans: {report['scans']['snapshot_scans_ok']} snapshot scans judged by the checker; "
        f"structural: {report['scans']['complete_ok']} complete ok, "
        f"{report['scans']['partial']} cut short, failures {len(report['scans']['failures'])}",
        f"clock: peers refused a node beyond the max offset {report['clock_refusals']} times "
        f"in {report['clock_beyond_faults']} beyond-the-bound faults",
        f"overload: leaseholders refused a batch for a full write queue "
        f"{report['overload_refusals']} times in {report['overload_faults']} bursts",
        f"refuse-raft: peers counted {report['raft_refusals']} refused raft streams in "
        f"{report['refuse_raft_faults']} faults",
        f"checksums: {report['checksums']['polls_during_run']} polls during the run; "
        f"replicas compared at {report['checksums']['compared']} (range, applied index) pairs",
        f"checker: {verdict} in {report['checker']['seconds']}s "
        f"({report['checker']['keys_checked']} keys)",
    ]
    for f in report["faults"]:
        lines.append(
            f"  fault {f['start']:7.1f}-{f['end']:7.1f}s {f['kind']:<22} {f['target']}: {f['detail']}"
        )
    if report["checker"]["ok"] is not True:
        lines.append(f"  {report['checker']['explanation'][:2000]}")
    if report["problems"]:
        lines.append(f"problems: {report['problems']}")
    lines.append(f"history: {report['history']}")
    lines.append(f"replay: {report['replay']}")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    if len(argv) == 2 and argv[0] == "check":
        result = check_history(load_history(argv[1]))
        print(result.ok, result.explanation)
        return 0 if result.ok else 1
    print(__doc__)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
