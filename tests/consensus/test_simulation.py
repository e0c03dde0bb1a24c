"""Seeded whole-cluster simulations of the Raft core under every fault at once.

Each seed runs a 3- or 5-node cluster (even seeds: 3, odd seeds: 5) with
partitions, loss, delay, duplication, reordering, crashes, membership
changes, leadership transfers, compaction and clock drift (every third seed
with lazy commit: followers learn commits from the next append or heartbeat),
checking Raft's
safety invariants and lease safety after every event and linearizability of
the client history at the end.

Knobs (environment):

* ``RANGEKV_SIM_SEEDS=5000`` -- run more seeds (default 300);
* ``RANGEKV_SIM_SEED=1234`` -- with ``-k replay``: run just that seed;
  ``RANGEKV_SIM_NODES`` overrides its node count and ``RANGEKV_SIM_TRACE=500``
  puts that many trace lines into the failure message (or prints them).
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import replace

import pytest
from testkit.seeds import chunk_count, chunk_id, run_chunk

from rangekv.raft.simulation import SimulationFailure, run_simulation, suite_config

CHUNK = 10


@pytest.mark.parametrize("chunk", range(chunk_count(CHUNK)), ids=chunk_id(CHUNK))
def test_seeds(chunk: int) -> None:
    run_chunk(
        chunk, CHUNK, lambda seed: run_simulation(seed, suite_config(seed)), SimulationFailure
    )


def test_replay() -> None:
    """Replays RANGEKV_SIM_SEED (skipped when unset)."""
    raw = os.environ.get("RANGEKV_SIM_SEED")
    if raw is None:
        pytest.skip("set RANGEKV_SIM_SEED=<seed> to replay one simulation")
    seed = int(raw)
    nodes_raw = os.environ.get("RANGEKV_SIM_NODES")
    cfg = suite_config(seed, int(nodes_raw) if nodes_raw else None)
    cfg = replace(cfg, trace_tail=int(os.environ.get("RANGEKV_SIM_TRACE", cfg.trace_tail)))
    result = run_simulation(seed, cfg)
    print(f"seed {seed} ({cfg.describe()}): {result.events} events, hash {result.trace_hash}")
    print(f"stats: {result.stats}")
    print("\n".join(result.trace_tail))


def test_same_seed_same_trace() -> None:
    a = run_simulation(7, suite_config(7))
    b = run_simulation(7, suite_config(7))
    assert a.trace_hash == b.trace_hash
    assert a.history == b.history
    assert a.events == b.events
    c = run_simulation(8, suite_config(7))
    assert c.trace_hash != a.trace_hash


def test_every_fault_family_fires() -> None:
    """Guard against a simulator that silently stopped exercising something:
    over a handful of seeds every fault family and both read paths must occur."""
    totals: Counter[str] = Counter()
    for seed in range(8):
        totals.update(run_simulation(seed, suite_config(seed)).stats)
    for key in (
        "partitions",
        "dropped",
        "duplicated",
        "crashes",
        "crashes_after_persist",
        "restarts",
        "snapshots_installed",
        "compactions",
        "conf_add_learner",
        "conf_add_node",
        "conf_remove_node",
        "transfers",
        "timeout_now_delivered",
        "elections_won",
        "leader_logs_checked",
        "reads_lease",
        "reads_read_index",
        "ok",
        "unknown",
    ):
        assert totals[key] > 0, f"{key} never happened: {dict(totals)}"
