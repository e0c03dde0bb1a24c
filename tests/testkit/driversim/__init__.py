"""A seeded simulator of whole storage nodes: the real driver, found wrong by seeds.

What is real: N `rangekv.raftnode.store.Store`s -- each with its raft groups
(`rangekv.replication.group.RaftGroup` over the pure raft core), the scheduler
(group commit, send-before-persist for leader appends, one state batch per
iteration), the range state machine (MVCC, txn records, leases) and the
replicas' request path (`RangeReplica.batch`: validation, lease or
read-index, write queue, proposal, apply), snapshot streaming and install, log
truncation, splits (the split transaction's record and trigger), restarts from
disk.

What is twinned (the libraries' in-memory twins, through the production seams):
the engines are `MemoryEngines` (simulated disks that keep what was synced
across a restart and lose the rest in a crash), the raft network is one
`MemoryNetwork` (links cut, held and released late, their queued messages
reordered, duplicated or lost, snapshot streams stalled between chunks), time
is one `ManualClock` moved only by the simulator (each
node sees it through a `ClockView` with its own wall offset), and chance is
`random.Random`s seeded from the seed. No worker thread (the memory engines
commit inline), no real sleep, no wall-clock read, no timer on the event loop
that could fire (the replicas' own deadlines are set beyond any run; clients
bound their waits in simulated time), and the cyclic garbage collector is off
during a run (it would finalize abandoned async generators at moments that
depend on the process's history): a seed is one run, always -- in any process,
under any PYTHONHASHSEED.

Not here: the meta range and the gateway (splits commit without meta intents,
as `testkit.inproc` does; clients follow NotLeaseHolder hints themselves, as
the gateway's DistSender would).

Modules: `world` (the cluster and its stepping), `clients` (operations through
the replicas, recorded for `rangekv.check`), `nemesis` (the events),
`invariants` (checked after every event), `runner` (`run_seed`).

Invariants after every event: at most one valid lease per range; applied <=
committed; a replica's applied index never goes back while its process lives;
two replicas of a range at the same applied index hold the same state; no MVCC
version a node applied vanishes while its process lives. At the end, with the
faults over and every key read back: the same again, and the client history
is linearizable (`rangekv.check.check_history`).

Reproducing a seed: a failure prints its seed and the command, e.g.
``RANGEKV_SIM_SEED=17 .venv/bin/pytest tests/simulation/test_driver_simulation.py
-k replay -s`` (prefixed with ``RANGEKV_TEST_MUTATION=...`` when the run was of
a mutation); the same seed gives the same trace (its digest is printed).
"""

from testkit.driversim.runner import SimConfig, SimResult, SimulationFailure, run_seed

__all__ = ["SimConfig", "SimResult", "SimulationFailure", "run_seed"]
