"""How fast does the linearizability checker judge histories with scans?

Scans tie keys together, so a history with scans over a small keyspace is
checked as one object whose state is every key's value (see
rangekv.check.partition): the joint search, not the per-key one.  This
benchmark generates, deterministically, linearizable histories from a
simulated atomic store (16 concurrent clients doing GET/PUT/CAS/DELETE and
scans over random sub-spans of 6 keys, some cut short by a limit, a few
FAIL and UNKNOWN outcomes), checks each one and prints the time.  Then it
times two rejections, explanation included: a scan that dropped a row it
must have seen (each key checked alone refutes it), and a scan that is not
a snapshot -- it saw a write that began after another write finished, but
not that other write -- which only the joint search refutes, by exhausting
every linearization of the history before it.

Targets on a 2-core machine: 7,000 operations with ~400 scans and ~20
unknown under 2 s; 150,000 operations with ~8,000 scans and ~2,000 unknown
under 120 s.

Run:  python benchmarks/check_scans.py [--sizes 7000,150000] [--seed S] [--keys K]
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace

from rangekv.check import Operation, OpKind, Outcome, check_history, generate_kv_history

# Unknown-outcome rate per size, so each size gets the mix of its target.
UNKNOWN_RATE = {7_000: 0.003, 150_000: 0.0133}


def tear(ops: list[Operation]) -> list[Operation] | None:
    """Drop one row of the last scan that saw a key certainly present all
    through it (written by an OK op completed before the scan began, nothing
    that could remove it in between): a scan that is no longer a snapshot."""
    for i in range(len(ops) - 1, -1, -1):
        s = ops[i]
        if s.kind is not OpKind.SCAN or s.outcome is not Outcome.OK:
            continue
        for key, value in s.rows:
            same_key = [o for o in ops if o.key == key and o.outcome is not Outcome.FAIL]
            writer = next((o for o in same_key if o.value == value and o.kind is OpKind.PUT), None)
            if writer is None or writer.outcome is not Outcome.OK or writer.complete >= s.invoke:
                continue
            removers = [
                o
                for o in same_key
                if o.kind is OpKind.DELETE or (o.kind is OpKind.CAS and o.value is None)
            ]
            if all(o.complete < writer.invoke or o.invoke > s.complete for o in removers):
                torn = replace(s, rows=tuple(r for r in s.rows if r[0] != key))
                return [*ops[:i], torn, *ops[i + 1 :]]
    return None


def unsnap(ops: list[Operation]) -> list[Operation] | None:
    """Make the scan nearest 60% of the history that allows it not a snapshot.

    Pick a scan S covering keys a and b, an OK PUT W_a on a completing
    inside S, the last OK PUT P on a completing before W_a began, and an OK
    PUT W_b on b invoked after W_a completed and completing inside S.  S is
    made to see P's value on a and W_b's on b: it must precede W_a (which
    overwrote P's unique value for good) and follow W_b, which began after
    W_a ended.
    """
    puts: dict[bytes, list[Operation]] = {}
    for o in ops:
        if o.kind is OpKind.PUT and o.outcome is Outcome.OK:
            puts.setdefault(o.key, []).append(o)
    order = sorted(range(len(ops)), key=lambda i: abs(i - 0.6 * len(ops)))
    for i in order:
        s = ops[i]
        if s.kind is not OpKind.SCAN or s.outcome is not Outcome.OK:
            continue
        for a in (k for k in puts if s.covers(k)):
            for w_a in puts[a]:
                if not s.invoke < w_a.complete < s.complete:
                    continue
                before = [p for p in puts[a] if p.complete < w_a.invoke]
                w_b = next(
                    (
                        w
                        for b in puts
                        if b != a and s.covers(b)
                        for w in puts[b]
                        if w.invoke > w_a.complete and w.complete < s.complete
                    ),
                    None,
                )
                if not before or w_b is None:
                    continue
                rows = dict(s.rows)
                assert before[-1].value is not None and w_b.value is not None
                rows[a], rows[w_b.key] = before[-1].value, w_b.value
                bad = [*ops[:i], replace(s, rows=tuple(sorted(rows.items()))), *ops[i + 1 :]]
                if check_history(per_key(bad)).ok:  # each key alone still fine
                    return bad
    return None


def per_key(ops: list[Operation]) -> list[Operation]:
    """Every scan split into one scan per key it saw: the keys checked alone."""
    keys = sorted({o.key for o in ops if o.kind is not OpKind.SCAN})
    out: list[Operation] = []
    for o in ops:
        if o.kind is not OpKind.SCAN:
            out.append(o)
            continue
        rows = dict(o.rows)
        for k in (k for k in keys if o.covers(k)):
            row = ((k, rows[k]),) if k in rows and o.outcome is Outcome.OK else ()
            out.append(replace(o, key=k, end=k + b"\x00", rows=row))
    return out


def run(size: int, seed: int, keys: int, refute_timeout: float) -> None:
    unknown_rate = UNKNOWN_RATE.get(size, 0.0133)
    start = time.perf_counter()
    ops = generate_kv_history(seed=seed, n_ops=size, keys=keys, unknown_rate=unknown_rate)
    generated = time.perf_counter() - start
    scans = sum(o.kind is OpKind.SCAN for o in ops)
    limited = sum(
        o.kind is OpKind.SCAN and o.end is not None and o.end.endswith(b"\x00") for o in ops
    )
    unknown = sum(o.outcome is Outcome.UNKNOWN for o in ops)
    failed = sum(o.outcome is Outcome.FAIL for o in ops)
    print(
        f"{size} ops over {keys} keys: {scans} scans ({limited} cut by a limit), "
        f"{unknown} unknown, {failed} failed (generated in {generated:.1f}s)",
        flush=True,
    )
    start = time.perf_counter()
    result = check_history(ops, timeout=600)
    elapsed = time.perf_counter() - start
    print(f"  check: ok={result.ok} in {elapsed:.2f}s ({result.keys_checked} keys)", flush=True)
    if result.ok is not True:
        raise SystemExit(f"unexpected verdict:\n{result.explanation}")
    for name, bad in (("a scan missing a row", tear(ops)), ("a scan not a snapshot", unsnap(ops))):
        if bad is None:
            print(f"  ({name}: no scan allows it)")
            continue
        start = time.perf_counter()
        result = check_history(bad, timeout=refute_timeout)
        elapsed = time.perf_counter() - start
        print(f"  {name}: ok={result.ok} in {elapsed:.2f}s (explanation included)", flush=True)
        if result.ok is True:
            raise SystemExit(f"{name} accepted")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="7000,150000")
    parser.add_argument("--seed", type=int, default=20240601)
    parser.add_argument("--keys", type=int, default=6)
    parser.add_argument(
        "--refute-timeout", type=float, default=300.0, help="check timeout for the bad histories"
    )
    args = parser.parse_args()
    for size in (int(s) for s in args.sizes.split(",")):
        run(size, args.seed, args.keys, args.refute_timeout)


if __name__ == "__main__":
    main()
