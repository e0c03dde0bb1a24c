"""Throughput of the pure Raft core: committed entries/s through a 3-node cluster.

Three RawNodes over MemoryStorage, messages handed directly from one node's
Ready to the recipient's `step` (no serialisation, no network), proposals in
batches through `propose_batch`. What is measured is the cost of the Raft
core itself plus the minimal driver loop every real driver also runs:
persist to storage, deliver, apply, advance.

Usage: python benchmarks/raft_throughput.py [--entries N] [--batch B] [--runs R]
Prints each run and the median, in committed (applied-on-all-nodes) entries/s.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import time

from rangekv.raft import Config, ConfState, MemoryStorage, Message, RawNode, StateType


class Cluster:
    """Minimal driver: persist, send (deliver directly), apply, advance."""

    def __init__(self, n: int) -> None:
        ids = tuple(range(1, n + 1))
        self.storages = {i: MemoryStorage(ConfState(voters=ids)) for i in ids}
        self.nodes = {
            i: RawNode(Config(id=i, rng_seed=1, max_inflight_msgs=512), self.storages[i])
            for i in ids
        }
        self.applied = dict.fromkeys(ids, 0)

    def pump(self) -> bool:
        """One pass over every node's Ready; returns whether anything happened."""
        outbox: list[Message] = []
        busy = False
        for nid, node in self.nodes.items():
            if not node.has_ready():
                continue
            busy = True
            rd = node.ready()
            st = self.storages[nid]
            if rd.entries:
                st.append(rd.entries)
            if rd.hard_state is not None:
                st.set_hard_state(rd.hard_state)
            outbox.extend(rd.messages)
            if rd.committed_entries:
                # The "state machine" only counts; applying is the driver's cost, not Raft's.
                self.applied[nid] += len(rd.committed_entries)
            node.advance(rd)
        nodes = self.nodes
        for m in outbox:
            nodes[m.to].step(m)
        return busy or bool(outbox)

    def settle(self) -> None:
        while self.pump():
            pass


def run_once(total: int, batch: int, pipeline: int) -> tuple[float, float]:
    """(entries/s by wall clock, entries/s by this process's CPU time)."""
    c = Cluster(3)
    c.nodes[1].campaign()
    c.settle()
    leader = c.nodes[1]
    assert leader.raft.state is StateType.LEADER
    payloads = [b"key-%06d=value" % i for i in range(batch)]
    base = c.applied[1]
    start = time.perf_counter()
    cpu_start = time.process_time()
    proposed = 0
    target = base + total
    while c.applied[1] < target:
        # Keep a few batches in flight so replication and apply overlap.
        while proposed < total and proposed - (c.applied[1] - base) < batch * pipeline:
            leader.propose_batch(payloads)
            proposed += batch
        c.pump()
    c.settle()
    elapsed = time.perf_counter() - start
    cpu = time.process_time() - cpu_start
    done = min(c.applied.values()) - base
    assert done >= total, (done, total)
    return done / elapsed, done / cpu


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--entries", type=int, default=300_000)
    ap.add_argument("--batch", type=int, default=1000)
    ap.add_argument("--pipeline", type=int, default=4)
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    rates, cpu_rates = [], []
    for r in range(args.runs):
        gc.collect()  # start every run from the same heap state
        rate, cpu_rate = run_once(args.entries, args.batch, args.pipeline)
        rates.append(rate)
        cpu_rates.append(cpu_rate)
        print(f"run {r + 1}: {rate:,.0f} entries/s wall, {cpu_rate:,.0f} entries/s CPU")
    # The CPU figure is the one to compare on a shared machine (it ignores steal time).
    print(
        f"median: {statistics.median(rates):,.0f} committed entries/s wall, "
        f"{statistics.median(cpu_rates):,.0f} per CPU-second (3 nodes, batch {args.batch})"
    )


if __name__ == "__main__":
    main()
