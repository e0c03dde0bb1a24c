"""One seed of the driver simulation, start to verdict.

`run_seed(seed, config)` builds the world from the seed, runs `config.steps`
nemesis steps -- each followed by a settle and every invariant -- then ends
the faults (links healed and released, stalled streams let go, nodes restarted,
clocks true), lets the cluster catch up, reads every key through the replicas,
checks the invariants once more and the whole client history for
linearizability. Everything random comes from ONE `random.Random(seed)`: the
nemesis draws from it, and every start of a store seeds its own rng
(incarnations, election timeouts, txn ids) from it. A failure raises
`SimulationFailure`: the seed, what broke, the command that replays it, and the
tail of the trace.
"""

from __future__ import annotations

import asyncio
import gc
import random
from collections import Counter
from dataclasses import dataclass, field

from rangekv.check import Operation, check_history
from rangekv.replication.mutations import Mutation
from rangekv.replication.sync_mode import FsmSyncMode
from testkit.driversim.clients import SimClients
from testkit.driversim.invariants import Invariants, InvariantViolation
from testkit.driversim.nemesis import Nemesis, Weights
from testkit.driversim.world import SimWorld

__all__ = ["SimConfig", "SimResult", "SimulationFailure", "replay_command", "run_seed"]

#: Where the replay test lives (the reproduce command names it).
REPLAY_TEST = "tests/simulation/test_driver_simulation.py"


@dataclass(frozen=True, slots=True)
class SimConfig:
    """What a seed runs with. `sync_mode=None`: drawn from the seed (half NOSYNC)."""

    steps: int = 300
    nodes: int = 3
    keys: int = 4
    split_keys: tuple[bytes, ...] = (b"k2",)
    #: None kept: after a truncation, a replica one entry behind needs a snapshot.
    log_retain_entries: int = 0
    max_clock_offset_ns: int = 500_000_000
    deadline_ticks: int = 40
    max_ops_in_flight: int = 4
    #: Ticks the end of a run may take to heal and catch up.
    final_ticks: int = 400
    sync_mode: FsmSyncMode | None = None
    mutation: Mutation = Mutation.NONE
    weights: Weights = field(default_factory=Weights)
    trace_tail: int = 40

    def mode_for(self, seed: int) -> FsmSyncMode:
        if self.sync_mode is not None:
            return self.sync_mode
        return FsmSyncMode.NOSYNC if seed % 2 else FsmSyncMode.SYNC


@dataclass(frozen=True, slots=True)
class SimResult:
    seed: int
    digest: str
    steps: int
    checks: int
    history: tuple[Operation, ...]
    stats: dict[str, int]
    trace_tail: tuple[str, ...]


class SimulationFailure(AssertionError):
    """A seed broke an invariant (or the history is not linearizable)."""

    def __init__(self, seed: int, config: SimConfig, reason: str, tail: list[str]) -> None:
        self.seed = seed
        self.reason = reason
        super().__init__(
            f"driver simulation seed {seed} failed: {reason}\n"
            f"reproduce: {replay_command(seed, config)}\n"
            f"trace tail ({len(tail)} lines):\n" + "\n".join(tail)
        )


def replay_command(seed: int, config: SimConfig) -> str:
    mutation = ""
    if config.mutation is not Mutation.NONE:
        mutation = f"RANGEKV_TEST_MUTATION={config.mutation.value} "
    return f"{mutation}RANGEKV_SIM_SEED={seed} .venv/bin/pytest {REPLAY_TEST} -k replay -s"


def run_seed(seed: int, config: SimConfig | None = None) -> SimResult:
    """Run one seed on a fresh event loop (see the module docstring).

    The cyclic garbage collector is off during the run: it would finalize
    abandoned async generators at allocation-dependent moments, i.e. at
    different points of two runs of the same seed. (What a run leaves behind is
    collected after it, once the collector is back on.)"""
    cfg = config or SimConfig()
    gc.disable()
    try:
        return asyncio.run(_run(seed, cfg))
    finally:
        gc.enable()


async def _run(seed: int, cfg: SimConfig) -> SimResult:
    rng = random.Random(seed)
    world = SimWorld(
        nodes=cfg.nodes,
        split_keys=cfg.split_keys,
        sync_mode=cfg.mode_for(seed),
        log_retain_entries=cfg.log_retain_entries,
        max_clock_offset_ns=cfg.max_clock_offset_ns,
        mutation=cfg.mutation,
        rng=random.Random(rng.getrandbits(64)),
    )
    clients = SimClients(world, cfg.keys, cfg.deadline_ticks)
    invariants = Invariants(world)
    nemesis = Nemesis(
        world,
        clients,
        invariants,
        rng,
        cfg.weights,
        max_ops_in_flight=cfg.max_ops_in_flight,
        max_clock_offset_ns=cfg.max_clock_offset_ns,
    )
    stats: Counter[str] = Counter()
    await world.start()
    try:
        try:
            for step in range(1, cfg.steps + 1):
                world.step = step
                line = await nemesis.step()
                stats[line.split(" ")[0]] += 1
                world.log(line)
                await _settle_and_check(world, clients, invariants)
            world.step = cfg.steps + 1
            await _end_faults(world, nemesis)
            await _catch_up(world, clients, invariants, cfg.final_ticks)
            await _final_reads(world, clients, invariants)
        except InvariantViolation as exc:
            raise SimulationFailure(seed, cfg, str(exc), world.trace[-cfg.trace_tail :]) from None
        history = clients.recorder.operations()
        verdict = check_history(history, timeout=30.0)
        if verdict.ok is False:
            raise SimulationFailure(
                seed,
                cfg,
                f"history not linearizable: {verdict.explanation}",
                world.trace[-cfg.trace_tail :],
            )
        stats.update(clients.outcomes)
        stats["snapshots"] = len(world.cluster.router.snapshot_results)
        return SimResult(
            seed=seed,
            digest=world.digest(),
            steps=cfg.steps,
            checks=invariants.checks,
            history=tuple(history),
            stats=dict(stats),
            trace_tail=tuple(world.trace[-cfg.trace_tail :]),
        )
    finally:
        await nemesis.stop_splits()
        await clients.give_up_all()
        await world.close()


async def _settle_and_check(world: SimWorld, clients: SimClients, invariants: Invariants) -> None:
    await world.settle()
    invariants.check()
    if clients.unexpected:
        raise InvariantViolation(
            f"a replica answered what it never should: {clients.unexpected[0]}"
        )


async def _end_faults(world: SimWorld, nemesis: Nemesis) -> None:
    router = world.cluster.router
    for a, b in sorted(nemesis.cuts):
        router.heal(a, b)
    nemesis.cuts.clear()
    router.release_all()
    nemesis.holds.clear()
    for src, dst in sorted(world.held_snapshots):
        world.release_snapshots(src, dst)
    world.cluster.clock.offsets_ns.clear()
    for node in world.node_ids:
        if not world.up(node):
            await world.restart(node)
    world.log("faults ended")


def _caught_up(world: SimWorld) -> bool:
    """Every range led and every replica at the same applied index. (Not: a valid
    lease. A leader whose TIMEOUT_NOW was lost reports TRANSFERRING until it
    ends its term itself; the reads pay a read-index meanwhile.)"""
    for range_id in world.range_ids:
        if world.leader(range_id) is None:
            return False
        applied = {r.applied_index for _n, r in world.live_replicas(range_id)}
        if len(applied) != 1:
            return False
    return True


async def _catch_up(
    world: SimWorld, clients: SimClients, invariants: Invariants, ticks: int
) -> None:
    for _ in range(ticks):
        if _caught_up(world) and clients.in_flight == 0:
            break
        world.tick()
        await _settle_and_check(world, clients, invariants)
    else:
        raise InvariantViolation(
            f"the cluster did not recover within {ticks} ticks after the faults ended "
            f"({clients.in_flight} operations running): {world.describe()}"
        )
    world.log("caught up: " + world.describe())


async def _final_reads(world: SimWorld, clients: SimClients, invariants: Invariants) -> None:
    """Read every key once the cluster is whole: a lost write shows in the history."""
    for key in clients.keys:
        clients.start(clients.get(key), world.node_ids[0])
        while clients.in_flight:
            world.tick()
            await _settle_and_check(world, clients, invariants)
