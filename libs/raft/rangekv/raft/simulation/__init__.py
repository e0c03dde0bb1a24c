"""Deterministic cluster simulator for the pure Raft core (``rangekv.raft``).

A run is a pure function of ``(seed, SimConfig)``: one ``random.Random``
drives the network (loss, latency, duplication, reordering, partitions),
the nemesis (crashes, restarts, membership changes, leadership transfers,
clock-rate changes), node clocks with bounded drift, "fsync" latency, log
compaction and the clients.  No threads, no asyncio, no wall clock.

After every event the :class:`InvariantChecker` verifies Raft's safety
properties plus lease safety (never two VALID leases at one instant); at
the end the cluster must converge and the client history (writes, lease
reads, read-index reads) must be linearizable.

Typical use::

    from rangekv.raft.simulation import SimConfig, run_simulation

    result = run_simulation(seed=42, config=SimConfig(nodes=5))
    print(result.trace_hash, result.stats)

A failure raises :class:`SimulationFailure` whose message names the
invariant, the seed, the config, the tail of the event trace and the
command that replays it.
"""

from rangekv.raft.simulation.cluster import Cluster
from rangekv.raft.simulation.config import Faults, SimConfig, derive_lease_duration, suite_config
from rangekv.raft.simulation.invariants import InvariantChecker, InvariantViolation
from rangekv.raft.simulation.kv import Command, CommandKind, KVStateMachine
from rangekv.raft.simulation.network import Network
from rangekv.raft.simulation.node import SimClock, SimNode
from rangekv.raft.simulation.runner import SimResult, SimulationFailure, run_simulation

__all__ = [
    "Cluster",
    "Command",
    "CommandKind",
    "Faults",
    "InvariantChecker",
    "InvariantViolation",
    "KVStateMachine",
    "Network",
    "SimClock",
    "SimConfig",
    "SimNode",
    "SimResult",
    "SimulationFailure",
    "derive_lease_duration",
    "run_simulation",
    "suite_config",
]
