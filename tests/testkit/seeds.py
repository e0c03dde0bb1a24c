"""Seeded suites in chunks: how many seeds a run has, and one chunk's verdict.

Both simulators (the raft core's in tests/consensus and the real driver's in
tests/simulation) run ``RANGEKV_SIM_SEEDS`` seeds (default 300) in chunks, one
test per chunk, so a failing chunk names its seeds and the rest still run.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable

SEEDS = int(os.environ.get("RANGEKV_SIM_SEEDS", "300"))


def chunk_count(size: int, seeds: int = SEEDS) -> int:
    return math.ceil(seeds / size)


def chunk_id(size: int, seeds: int = SEEDS) -> Callable[[int], str]:
    """The test id of chunk i: ``seeds{first}-{last}``."""

    def name(chunk: int) -> str:
        lo = chunk * size
        return f"seeds{lo}-{min(lo + size, seeds) - 1}"

    return name


def run_chunk(
    chunk: int,
    size: int,
    run_one: Callable[[int], object],
    failure: type[Exception],
    seeds: int = SEEDS,
) -> None:
    """Runs every seed of one chunk; the first failure is raised with the seeds of
    the others named, so one red test says everything the chunk found."""
    failures: list[Exception] = []
    for seed in range(chunk * size, min((chunk + 1) * size, seeds)):
        try:
            run_one(seed)
        except failure as exc:
            failures.append(exc)
    if failures:
        others = ", ".join(str(getattr(f, "seed", "?")) for f in failures[1:])
        also = f"\n(also failing in this chunk: seeds {others})" if others else ""
        raise AssertionError(f"{failures[0]}{also}")
