"""Seeded whole-cluster simulations with quiescence on (rangekv/raft/quiesce.py).

Idle leaders quiesce (their groups stop ticking and heartbeating) and the nodes
exchange node-level liveness heartbeats over the simulated network, which a
quiesced leader's lease rests on. Two families of seeds, both checking every
invariant after every event -- in particular that no two nodes hold a valid
lease at one instant -- and linearizability at the end:

* ``mixed``: every fault at once (partitions, loss, delay, duplication,
  reordering, crashes, membership changes, transfers, compaction, clock drift)
  with clients sparse enough that groups sit idle and quiesce; 3 or 5 nodes;
* ``partitions``: 3 nodes, partitions (isolations, one-way and single-link cuts),
  loss, delay and clock drift only, with long idle stretches: quiesced groups
  losing and regaining liveness.

And the mutation: a driver that wakes quiesced followers on its own
(``Mutation.QUIESCED_FOLLOWER_CAMPAIGNS``, the simulator's
``unsafe_quiesced_follower_ticks``) must be caught.

Two seeds of three also run with lazy commit (followers learn commits from the
next append or heartbeat), as raftnode does.

``RANGEKV_SIM_QUIESCE_SEEDS=2000`` runs more seeds of each family (default 60).
"""

from __future__ import annotations

import math
import os
from collections import Counter

import pytest

from rangekv.raft.simulation import SimConfig, SimulationFailure, run_simulation
from rangekv.raft.simulation.config import Faults
from rangekv.replication.mutations import Mutation

SEEDS = int(os.environ.get("RANGEKV_SIM_QUIESCE_SEEDS", "60"))
CHUNK = 20


def mixed(seed: int) -> SimConfig:
    return SimConfig(
        nodes=3 if seed % 2 == 0 else 5,
        quiesce=True,
        lazy_commit=seed % 3 != 0,
        lazy_heartbeat=seed % 2 == 0,
        clients=2,
        max_think=12.0,
    )


def partitions(seed: int, **overrides: bool) -> SimConfig:
    return SimConfig(
        nodes=3,
        quiesce=True,
        lazy_commit=seed % 3 != 0,
        lazy_heartbeat=seed % 2 == 0,
        clients=1,
        max_think=20.0,
        duration=400.0,
        faults=Faults(crash=False, conf_change=False, transfer=False, compaction=False),
        **overrides,  # type: ignore[arg-type]
    )


FAMILIES = {"mixed": mixed, "partitions": partitions}

#: The RANGEKV_TEST_MUTATION a simulator flag stands for.
MUTATIONS = {Mutation.QUIESCED_FOLLOWER_CAMPAIGNS: {"unsafe_quiesced_follower_ticks": True}}


def _chunks() -> list[tuple[str, int]]:
    return [(family, chunk) for family in FAMILIES for chunk in range(math.ceil(SEEDS / CHUNK))]


@pytest.mark.parametrize(("family", "chunk"), _chunks(), ids=lambda v: str(v))
def test_seeds(family: str, chunk: int) -> None:
    make = FAMILIES[family]
    failures: list[SimulationFailure] = []
    seen: Counter[str] = Counter()
    for seed in range(chunk * CHUNK, min((chunk + 1) * CHUNK, SEEDS)):
        try:
            result = run_simulation(seed, make(seed))
        except SimulationFailure as exc:
            failures.append(exc)
        else:
            seen.update({k: v for k, v in result.stats.items() if isinstance(v, int)})
    if failures:
        others = ", ".join(str(f.seed) for f in failures[1:])
        also = f"\n(also failing in this chunk: seeds {others})" if others else ""
        raise AssertionError(f"{failures[0]}{also}")
    # The runs did what they are for: groups quiesced, and followers woke on lapses.
    assert seen["quiesced"] > 0 and seen["follower_wakes"] > 0, dict(seen)


def test_same_seed_same_trace_with_quiescence() -> None:
    a = run_simulation(3, mixed(3))
    b = run_simulation(3, mixed(3))
    assert a.trace_hash == b.trace_hash and a.history == b.history


@pytest.mark.parametrize("mutation", sorted(MUTATIONS, key=lambda m: m.value), ids=str)
def test_the_mutation_is_caught(mutation: Mutation) -> None:
    caught: list[SimulationFailure] = []
    for seed in range(40):
        try:
            run_simulation(seed, partitions(seed, **MUTATIONS[mutation]))
        except SimulationFailure as exc:
            caught.append(exc)
            break
    assert caught, f"{mutation.value}: 40 seeds and the simulator saw nothing wrong"
    assert caught[0].invariant == "lease safety", caught[0]
