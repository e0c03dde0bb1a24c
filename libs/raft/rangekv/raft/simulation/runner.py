"""One complete simulated run: chaos, healing, convergence, linearizability.

:func:`run_simulation` is the entry point tests and benchmarks use.  A run
has two phases:

1. *faulty* (``SimConfig.duration``): clients issue operations while the
   nemesis and the network inject every enabled fault; invariants are
   checked after every event;
2. *healing* (bounded by ``SimConfig.settle``): partitions heal, crashed
   nodes restart, the network stops losing messages, clients stop issuing;
   the cluster must converge -- one leader, every member applied exactly the
   leader's whole log.

Then every member must hold the same state, and the client history must be
linearizable.  Any failure raises :class:`SimulationFailure`, whose message
carries everything needed to replay the run.
"""

from __future__ import annotations

import math
import os
import tempfile
import time
import traceback
from dataclasses import dataclass, field

from rangekv.check import CheckResult, Operation, check_history, save_history
from rangekv.raft import InvariantViolation as CoreInvariantViolation
from rangekv.raft.simulation.cluster import Cluster
from rangekv.raft.simulation.config import SimConfig
from rangekv.raft.simulation.events import CLIENT
from rangekv.raft.simulation.invariants import InvariantViolation
from rangekv.raft.simulation.nemesis import schedule_nemesis

REPLAY_TEST = "tests/consensus/test_simulation.py"


class SimulationFailure(AssertionError):
    """A run broke an invariant; the message says which, where, and how to replay."""

    def __init__(self, seed: int, config: SimConfig, invariant: str, detail: str, tail: str):
        self.seed = seed
        self.config = config
        self.invariant = invariant
        self.detail = detail
        replay = (
            f"RANGEKV_SIM_SEED={seed} RANGEKV_SIM_NODES={config.nodes} "
            f"pytest {REPLAY_TEST} -k replay"
        )
        super().__init__(
            f"simulation seed {seed} failed: {invariant}: {detail}\n"
            f"config: {config.describe()}\n"
            f"replay: {replay}\n"
            f"last events:\n{tail}"
        )


@dataclass(slots=True)
class SimResult:
    """Summary of a successful run."""

    seed: int
    config: SimConfig
    trace_hash: str
    events: int
    virtual_time: float
    history: list[Operation]
    linearizable: bool | None
    """None when the checker timed out (inconclusive, not a failure)."""
    stats: dict[str, int] = field(default_factory=dict)
    elapsed: float = 0.0
    trace_tail: list[str] = field(default_factory=list)
    """The last ``config.trace_tail`` trace lines."""


def run_simulation(
    seed: int, config: SimConfig | None = None, *, check_timeout: float | None = 20.0
) -> SimResult:
    """Run one seeded simulation end to end; raises SimulationFailure on any violation."""
    cfg = config or SimConfig()
    started = time.perf_counter()
    cluster = Cluster(seed, cfg)
    try:
        _run_phases(cluster)
        history = _finish(cluster)
    except InvariantViolation as exc:
        raise _failure(cluster, exc.invariant, exc.detail) from exc
    except Exception as exc:
        detail = f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=8)}"
        # The core's own consistency checks firing is a finding, not a crash of ours.
        what = (
            "core invariant" if isinstance(exc, CoreInvariantViolation) else "unexpected exception"
        )
        raise _failure(cluster, what, detail) from exc
    result = check_history(history, timeout=check_timeout)
    if result.ok is False:
        path = _save(seed, history)
        raise _failure(cluster, "linearizability", _explain(result, path))
    stats = dict(cluster.clients.stats)
    stats.update(
        sent=cluster.network.sent,
        dropped=cluster.network.dropped,
        duplicated=cluster.network.duplicated,
        leaders=len(cluster.checker.leaders),
        lease_checks=cluster.checker.lease_checks,
        nodes_created=len(cluster.nodes),
    )
    stats.update(cluster.counters)
    return SimResult(
        seed=seed,
        config=cfg,
        trace_hash=cluster.trace_hash,
        events=cluster.events,
        virtual_time=cluster.now,
        history=history,
        linearizable=result.ok,
        stats=stats,
        elapsed=time.perf_counter() - started,
        trace_tail=list(cluster.trace),
    )


def _run_phases(c: Cluster) -> None:
    cfg = c.cfg
    for slot in range(cfg.clients):
        c.schedule(c.rng.uniform(0.0, cfg.election_tick * 2.0), CLIENT, slot)
    schedule_nemesis(c)
    c.run_until(cfg.duration)
    # Healing phase.
    c.faulty = False
    c.network.heal()
    c.network.quiet = True
    c.log("healing: partitions healed, nodes restarting, faults off")
    for _, node in sorted(c.nodes.items()):
        if not node.alive and not node.removed:
            c.start_node(node)
    if not c.run_until(cfg.duration + cfg.settle, stop=lambda: _converged(c)):
        raise InvariantViolation("convergence", _convergence_report(c))


def _converged(c: Cluster) -> bool:
    """One leader whose whole log is committed and applied by every member."""
    lead = c.leader()
    if lead is None:
        return False
    raft = lead.node()
    st = raft.status()
    if st.commit != lead.storage.last_index() or raft.has_ready():
        return False
    cs = lead.conf_state
    for nid in (*cs.voters, *cs.learners):
        node = c.nodes.get(nid)
        if node is None or not node.alive or node.applied != st.commit:
            return False
        if node.node().has_ready():
            return False
    return True


def _convergence_report(c: Cluster) -> str:
    lead = c.leader()
    parts = [f"no convergence within {c.cfg.settle} after healing; leader="]
    parts.append(f"n{lead.id}" if lead else "none")
    for nid, node in sorted(c.nodes.items()):
        if node.alive:
            st = node.node().status()
            parts.append(
                f" | n{nid} {st.state.name} t{st.term} commit={st.commit} applied={node.applied}"
                f" last={node.storage.last_index()} conf={node.conf_state}"
            )
        else:
            parts.append(f" | n{nid} {'removed' if node.removed else 'down'}")
    return "".join(parts)


def _finish(c: Cluster) -> list[Operation]:
    lead = c.leader()
    assert lead is not None
    cs = lead.conf_state
    members = {nid: c.nodes[nid] for nid in sorted((*cs.voters, *cs.learners))}
    c.checker.check_converged({nid: (n.applied, n.kv.fingerprint()) for nid, n in members.items()})
    c.check_all_logs()
    for _, w in sorted(c.clients.writes.items()):
        c.clients.write_unknown(w)
    for _, r in sorted(c.clients.reads.items()):
        c.clients.read_abandoned(r)
    c.log(f"converged: leader n{lead.id} applied={lead.applied} members={sorted(members)}")
    return list(c.clients.history)


def _failure(c: Cluster, invariant: str, detail: str) -> SimulationFailure:
    tail = "\n".join(c.trace)
    detail = f"{detail} (t={c.now:.4f}, event #{c.events})"
    return SimulationFailure(c.seed, c.cfg, invariant, detail, tail)


def _save(seed: int, history: list[Operation]) -> str:
    directory = os.environ.get("RANGEKV_SIM_ARTIFACTS", tempfile.gettempdir())
    path = os.path.join(directory, f"rangekv-sim-{seed}-history.json")
    try:
        save_history(path, history)
    except OSError:
        return "(history not saved)"
    return path


def _explain(result: CheckResult, path: str) -> str:
    text = result.explanation or "not linearizable"
    return f"key {result.failed_key!r}: {text}\nhistory saved to {path}"


def history_summary(history: list[Operation]) -> str:
    """Counts by outcome, for benchmark output."""
    unknown = sum(1 for op in history if math.isinf(op.complete))
    return f"{len(history)} ops ({unknown} unknown)"
