"""Soak the deterministic cluster simulator over a range of seeds.

Runs ``rangekv.raft.simulation.run_simulation`` for seeds ``[start, start+count)``,
each with the configuration the test suite gives it (``suite_config``: even
seeds 3 nodes, odd 5, lazy commit and heartbeats on some), so that the replay
command printed for a failing seed reproduces it, and
prints throughput (seeds/s, simulated events/s) and the average coverage
counters (elections, crashes, snapshots installed, conf changes, lease and
read-index reads, ...), which is what one looks at when tuning the
simulator's knobs: a fault that never fires tests nothing.

Failures are printed as they happen (seed + invariant + replay command) and
counted; the exit status is 1 if any seed failed.

Usage: python benchmarks/sim_soak.py [--start S] [--count N] [--nodes 3|5]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from dataclasses import replace

from rangekv.raft.simulation import SimConfig, SimulationFailure, run_simulation, suite_config


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--start", type=int, default=0)
    parser.add_argument("--count", type=int, default=100)
    parser.add_argument("--nodes", type=int, default=0, help="0: alternate 3 and 5 by seed")
    parser.add_argument("--duration", type=float, default=SimConfig().duration)
    args = parser.parse_args(argv)

    totals: Counter[str] = Counter()
    failed: list[int] = []
    inconclusive: list[int] = []
    began = time.perf_counter()
    for seed in range(args.start, args.start + args.count):
        cfg = replace(suite_config(seed, args.nodes or None), duration=args.duration)
        nodes = cfg.nodes
        try:
            result = run_simulation(seed, cfg)
        except SimulationFailure as exc:
            failed.append(seed)
            first = str(exc).splitlines()[0]
            print(f"FAIL seed {seed}: {first}", flush=True)
            print(f"     RANGEKV_SIM_SEED={seed} RANGEKV_SIM_NODES={nodes}", flush=True)
            continue
        if result.linearizable is None:
            inconclusive.append(seed)
        totals.update(result.stats)
        totals["events"] += result.events
    elapsed = time.perf_counter() - began
    ran = args.count - len(failed)
    print(
        f"{args.count} seeds in {elapsed:.1f}s ({args.count / elapsed:.2f} seeds/s, "
        f"{totals['events'] / elapsed:,.0f} events/s); failed: {failed or 'none'}; "
        f"checker inconclusive: {inconclusive or 'none'}"
    )
    if ran:
        print("average per seed:")
        for key, value in sorted(totals.items()):
            print(f"  {key:24s} {value / ran:10.1f}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
