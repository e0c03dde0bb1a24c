"""How fast does the linearizability checker judge a large single-key history?

The chaos harness produces long histories against few hot keys, and a
checker that takes minutes on them would not be run.  This benchmark
generates, deterministically, a 10,000-operation single-key history from a
simulated atomic register (16 concurrent clients, random overlapping
intervals, a get/put/cas/delete mix, a few FAIL and UNKNOWN outcomes),
checks it three times and prints the median time.  The target is under
5 seconds on a 2-core machine.

Run:  python benchmarks/checker_speed.py [--ops N] [--clients C] [--seed S]
"""

from __future__ import annotations

import argparse
import statistics
import time

from rangekv.check import Operation, Outcome, check_history, generate_register_history


def max_concurrency(ops: list[Operation]) -> int:
    """Most operations with a known outcome in flight at once (unknown ones never end)."""
    done = [o for o in ops if o.outcome is not Outcome.UNKNOWN]
    events = sorted(
        [(o.invoke, 1) for o in done] + [(o.complete, -1) for o in done],
        key=lambda e: (e[0], e[1]),
    )
    level = peak = 0
    for _, delta in events:
        level += delta
        peak = max(peak, level)
    return peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ops", type=int, default=10_000)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seed", type=int, default=20240601)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()

    ops = generate_register_history(seed=args.seed, n_ops=args.ops, clients=args.clients)
    unknown = sum(o.outcome is Outcome.UNKNOWN for o in ops)
    failed = sum(o.outcome is Outcome.FAIL for o in ops)
    print(
        f"history: {len(ops)} ops on 1 key, {args.clients} clients, "
        f"{unknown} unknown, {failed} failed, peak concurrency of the others {max_concurrency(ops)}"
    )
    times = []
    for run in range(args.runs):
        start = time.perf_counter()
        result = check_history(ops)
        times.append(time.perf_counter() - start)
        print(f"run {run + 1}: ok={result.ok} in {times[-1]:.3f}s")
        if result.ok is not True:
            raise SystemExit(f"unexpected verdict:\n{result.explanation}")
    print(f"median check time: {statistics.median(times):.3f}s")


if __name__ == "__main__":
    main()
