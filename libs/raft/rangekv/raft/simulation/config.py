"""Knobs of one simulated run, and the lease derivation.

Everything a run does is a function of ``(seed, SimConfig)``; both are printed
when a run fails so the failure can be replayed bit for bit.  The defaults are
tuned so that one run of a 3- or 5-node cluster takes well under a second
while still crossing many elections, partitions, crashes and snapshots.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace


@dataclass(frozen=True, slots=True)
class Faults:
    """Which fault families the nemesis and the network may inject.

    Each flag switches a whole family so that a failing seed can be bisected
    ("does it still fail without duplicates?") by replaying with one flag off.
    """

    partition: bool = True
    """Random partitions: symmetric splits, single isolations, asymmetric link cuts."""
    drop: bool = True
    """Independent message loss."""
    delay: bool = True
    """Random latency, including a rare heavy tail far beyond an election timeout."""
    duplicate: bool = True
    """A message is occasionally delivered twice."""
    reorder: bool = True
    """Without it each directed link is FIFO even with random delays."""
    crash: bool = True
    """Crash (losing everything not persisted through Ready) and later restart."""
    conf_change: bool = True
    """Add learner, promote learner, remove voter / learner."""
    transfer: bool = True
    """Leadership transfers to a random voter."""
    compaction: bool = True
    """Snapshot + compact the log so lagging and restarted nodes need snapshots."""
    clock_drift: bool = True
    """Per-node clock rates in ``[1 - drift, 1 + drift]`` that change over time."""

    @classmethod
    def none(cls) -> Faults:
        """A perfectly well-behaved world (still with multiple nodes and clients)."""
        return cls(**{f.name: False for f in fields(cls)})

    def enabled(self) -> list[str]:
        """Names of the enabled fault families, for failure reports."""
        return [f.name for f in fields(self) if getattr(self, f.name)]


def derive_lease_duration(
    election_tick: int, tick_interval: float, drift: float, margin: float = 0.9
) -> float:
    """The longest lease that stays safe under the given drift bound, times ``margin``.

    OVERVIEW.md requires ``lease * (1 + drift) < election_tick * tick_interval *
    (1 - drift)``.  We are one tick stricter: a follower resets its election
    timer when a heartbeat arrives, which may be just before its next tick,
    so only ``election_tick - 1`` full tick intervals are guaranteed to pass
    (on its own clock) before it will vote for someone else.  Both clocks may
    drift in opposite directions, hence the ratio ``(1 - drift) / (1 + drift)``.
    """
    if election_tick < 2:
        raise ValueError("election_tick must be >= 2 for a non-empty lease")
    if not 0 <= drift < 1:
        raise ValueError("drift must be in [0, 1)")
    if not 0 < margin < 1:
        raise ValueError("margin must be in (0, 1)")
    guaranteed = (election_tick - 1) * tick_interval * (1 - drift) / (1 + drift)
    return guaranteed * margin


@dataclass(frozen=True, slots=True)
class SimConfig:
    """One run's parameters; times are in virtual units (1.0 = one tick interval)."""

    nodes: int = 3
    faults: Faults = field(default_factory=Faults)
    duration: float = 250.0
    """Virtual time of the faulty phase (clients and nemesis active)."""
    settle: float = 300.0
    """Upper bound on the healing phase before the run is declared stuck."""
    tick_interval: float = 1.0
    election_tick: int = 10
    heartbeat_tick: int = 2
    drift: float = 0.01
    lease_margin: float = 0.9
    clients: int = 4
    keys: int = 3
    # Network.
    min_delay: float = 0.05
    max_delay: float = 1.0
    fixed_delay: float = 0.2
    drop_rate: float = 0.05
    duplicate_rate: float = 0.03
    long_delay_rate: float = 0.005
    long_delay_max: float = 25.0
    # Nodes.  Tight flow-control limits so probing, pagination and back-pressure
    # paths of the core run too, not just the happy path.
    max_inflight_msgs: int = 4
    max_size_per_msg: int = 300
    max_uncommitted_entries_size: int = 2000
    unreachable_report_rate: float = 0.5
    """Chance that a message lost to a partition is reported via report_unreachable."""
    max_persist_latency: float = 0.15
    crash_after_persist_rate: float = 0.002
    compact_every: int = 12
    """Entries applied since the last snapshot before a node compacts."""
    # Nemesis.
    nemesis_interval: float = 3.0
    """Mean virtual time between nemesis actions."""
    # Clients.
    max_think: float = 1.5
    op_timeout: float = 25.0
    trace_tail: int = 40
    """Trace lines kept for failure reports (does not change the run or its hash)."""
    # Deliberate bugs, so tests can prove the checks catch them.  Never set in real runs.
    unsafe_reads: bool = False
    """Serve "lease" reads from any node's applied state without checking anything."""
    unsafe_send_before_persist: bool = False
    """Send a Ready's messages before persisting it (a crash in between loses votes)."""
    lease_duration_override: float | None = None
    """Run the nodes with this lease instead of the derived one (e.g. an unsafe one)."""
    # Quiescence (rangekv/raft/quiesce.py, simulation/quiescence.py).
    quiesce: bool = False
    """Idle leaders quiesce; nodes exchange node-level liveness heartbeats."""
    quiesce_rate: float = 0.5
    """Chance per tick that an idle, caught-up leader quiesces."""
    lazy_commit: bool = False
    """The nodes run with `Config.lazy_commit` (followers learn commits late)."""
    lazy_heartbeat: bool = False
    """The nodes run with `Config.lazy_heartbeat` (appends stand in for heartbeats)."""
    unsafe_quiesced_follower_ticks: bool = False
    """Deliberate bug: the driver keeps ticking quiesced followers (so they campaign
    while their leader's lease rests on their liveness answers)."""

    def __post_init__(self) -> None:
        if self.nodes < 1:
            raise ValueError("nodes must be >= 1")
        if self.heartbeat_tick >= self.election_tick:
            raise ValueError("heartbeat_tick must be < election_tick")

    @property
    def lease_duration(self) -> float:
        """The ``Config.lease_duration`` every simulated node runs with."""
        if self.lease_duration_override is not None:
            return self.lease_duration_override
        drift = self.drift if self.faults.clock_drift else 0.0
        return derive_lease_duration(
            self.election_tick, self.tick_interval, drift, self.lease_margin
        )

    @property
    def min_voters(self) -> int:
        """Conf changes never shrink the voter set below this."""
        return min(self.nodes, 3)

    @property
    def max_voters(self) -> int:
        """Conf changes never grow the voter set above this."""
        return self.nodes + 1

    def with_faults(self, **flags: bool) -> SimConfig:
        """A copy with some fault families switched."""
        return replace(self, faults=replace(self.faults, **flags))

    def describe(self) -> str:
        """Compact rendering for failure reports (non-default fields only)."""
        default = SimConfig()
        changed = {
            k: v for k, v in asdict(self).items() if k != "faults" and getattr(default, k) != v
        }
        extra = f", overrides={changed}" if changed else ""
        return f"nodes={self.nodes}, faults={self.faults.enabled()}{extra}"


def suite_config(seed: int, nodes: int | None = None) -> SimConfig:
    """The configuration `seed` runs with in the test suite and in
    `benchmarks/sim_soak.py`, so that a seed either reports replays the same run:
    every fault on; 3 nodes on even seeds, 5 on odd ones (`nodes` overrides); lazy
    commit on every third seed and lazy heartbeats on half the seeds, both as
    raftnode runs."""
    return SimConfig(
        nodes=nodes if nodes is not None else (3 if seed % 2 == 0 else 5),
        lazy_commit=seed % 3 == 1,
        lazy_heartbeat=seed % 4 in (1, 2),
    )
