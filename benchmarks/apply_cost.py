"""CPU a range's state machine spends applying puts, with and without a version ceiling.

    python benchmarks/apply_cost.py [--commands 400] [--puts 1,64] [--keys 10000] [--runs 5]

Every replica applies every committed put (`RangeStateMachine.apply_command`):
decode the raft command, version each write, write it into the apply batch,
answer. A put must land above its key's newest version, and a range that knows
a bound on all its versions (its version ceiling, see
rangekv.raftnode.range_state) skips reading that version for a put above it;
one without (a range written by a build that kept none) seeks RocksDB for
every put. This script measures both on real RocksDB (nosync commits, as
raftnodes run by default): `--keys` keys preloaded with one version each, then
`--commands` commands of N puts each (N from `--puts`: 1 is a put alone in its
raft entry, as over many ranges; 64, a gateway batch of 64 callers on one
range) to random keys, one batch and commit per command. Process CPU time per
put; the two cases alternate for `--runs` rounds and the medians are printed.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

from rangekv.common.descriptors import RangeDescriptor, ReplicaDescriptor
from rangekv.common.hlc import Timestamp
from rangekv.raftnode.range_state import RangeStateMachine, encode_ceiling, ts_to_proto
from rangekv.replication.state_engine import VERSION_CEILING, AppliedState, StateEngine
from rangekv.replication.sync_mode import FsmSyncMode
from rangekv.v1 import raftcmd_pb2, replica_pb2

DESC = RangeDescriptor(1, b"", b"", (ReplicaDescriptor(1, 1),), generation=1)


class _NoEvents:
    def split_applied(self, left: object, right: object, batch: object) -> None:
        raise AssertionError("no splits here")

    def replica_change_applied(self, new: object, txn_id: bytes) -> None:
        raise AssertionError("no replica changes here")


def key(i: int) -> bytes:
    return b"bench/%08d" % i


def open_range(path: Path, keys: int, *, ceiling: bool) -> tuple[StateEngine, RangeStateMachine]:
    engine = StateEngine.open(path, FsmSyncMode.NOSYNC)
    batch = engine.new_batch()
    batch.set_applied_state(DESC.range_id, AppliedState(0, 1))
    if ceiling:  # as a bootstrapped range starts
        batch.put_local(DESC.range_id, VERSION_CEILING, encode_ceiling(0))
    engine.commit(batch)
    sm = RangeStateMachine(DESC, engine, _NoEvents(), lambda ts: None)
    if ceiling and sm.version_ceiling is None:
        raise AssertionError("the range's ceiling was not loaded: the comparison would be void")
    wall = 1
    for start in range(0, keys, 500):  # one version of every key
        ops = [
            replica_pb2.ReplicaOp(put=replica_pb2.PutOp(key=key(i), value=b"x" * 100))
            for i in range(start, min(keys, start + 500))
        ]
        apply(engine, sm, Timestamp(wall, 0), ops, start + 1)
        wall += 1
    return engine, sm


def apply(
    engine: StateEngine,
    sm: RangeStateMachine,
    ts: Timestamp,
    ops: list[replica_pb2.ReplicaOp],
    index: int,
) -> None:
    cmd = raftcmd_pb2.RaftCommand(timestamp=ts_to_proto(ts), writes=ops).SerializeToString()
    batch = engine.new_batch()
    sm.apply_command(index, cmd, batch)
    sm.record_applied(index, 1, batch)
    engine.commit(batch)


def one_round(args: argparse.Namespace, puts: int, *, ceiling: bool, seed: int) -> float:
    """CPU µs per put of `args.commands` commands of `puts` puts each."""
    with tempfile.TemporaryDirectory(prefix="apply-cost-") as tmp:
        engine, sm = open_range(Path(tmp), args.keys, ceiling=ceiling)
        rng = random.Random(seed)
        commands = [
            [
                replica_pb2.ReplicaOp(
                    put=replica_pb2.PutOp(key=key(rng.randrange(args.keys)), value=b"y" * 100)
                )
                for _ in range(puts)
            ]
            for _ in range(args.commands)
        ]
        t0 = time.process_time()
        for n, ops in enumerate(commands):
            apply(engine, sm, Timestamp(1_000_000 + n, 0), ops, 1_000_000 + n)
        spent = time.process_time() - t0
        engine.close()
    return spent / (args.commands * puts) * 1e6


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--commands", type=int, default=400, help="commands per round (default 400)")
    p.add_argument("--puts", default="1,64", help="puts per command, comma-separated")
    p.add_argument("--keys", type=int, default=10_000, help="keys preloaded (default 10000)")
    p.add_argument("--runs", type=int, default=5, help="alternating rounds (default 5)")
    args = p.parse_args()
    if args.commands <= 0 or args.keys <= 0 or args.runs <= 0:
        p.error("--commands, --keys and --runs must be positive")
    try:
        sizes = [int(x) for x in args.puts.split(",")]
    except ValueError:
        p.error(f"--puts takes positive integers separated by commas, got {args.puts!r}")
    if any(n <= 0 for n in sizes):
        p.error(f"--puts takes positive integers separated by commas, got {args.puts!r}")
    print(
        f"apply cost: {args.keys} keys, {args.commands} commands per round, "
        f"{args.runs} alternating rounds; CPU µs per put (median, all rounds)"
    )
    for puts in sizes:
        got: dict[bool, list[float]] = {True: [], False: []}
        for run in range(args.runs):
            for ceiling in (run % 2 == 0, run % 2 != 0):
                got[ceiling].append(one_round(args, puts, ceiling=ceiling, seed=run))
            print(f"  {puts} puts per command: round {run + 1}/{args.runs}", file=sys.stderr)
        with_c, without = statistics.median(got[True]), statistics.median(got[False])
        print(
            f"{puts:>3} puts per command: with a ceiling {with_c:6.1f}, without {without:6.1f}"
            f" (ratio {with_c / without:.2f}); rounds "
            f"{[round(x, 1) for x in got[True]]} / {[round(x, 1) for x in got[False]]}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
