"""Raft ticks, elections, and the lease derived from them."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["RaftTiming"]


@dataclass(frozen=True, slots=True)
class RaftTiming:
    """Ticks, elections and the lease derived from them.

    Lease derivation (why a new leader can never serve while an old lease is valid):
    the lease of a round sent at leader time `s` lasts until `s + lease_duration`
    on the leader's clock, i.e. at most `lease_duration * (1 + drift)` of real
    time. Every voter that acknowledged that round heard from the leader after
    `s` and (CheckQuorum + leader stickiness; a restarted node waits one election
    timeout) grants no vote for `election_ticks` of its own ticks. It may have heard
    the leader just before one of its ticks, so that is at least
    `(election_ticks - 1) * tick_interval * (1 - drift)` of real time; a late tick
    only lengthens the wait. So the lease is safe iff
    `lease_duration * (1 + drift) < (election_ticks - 1) * tick_interval * (1 - drift)`;
    we also subtract `lease_margin` for the time between stamping a round and the
    heartbeat leaving the process.
    """

    tick_interval: float = 0.1
    heartbeat_ticks: int = 1
    election_ticks: int = 10
    max_clock_drift: float = 0.05
    lease_margin: float = 0.05

    def __post_init__(self) -> None:
        if self.tick_interval <= 0:
            raise ValueError("tick_interval must be > 0")
        if not 0 < self.heartbeat_ticks < self.election_ticks:
            raise ValueError("need 0 < heartbeat_ticks < election_ticks")
        if not 0 <= self.max_clock_drift < 0.5:
            raise ValueError("max_clock_drift must be in [0, 0.5)")
        if self.lease_duration <= self.heartbeat_ticks * self.tick_interval:
            raise ValueError(
                "the derived lease is not longer than a heartbeat interval; "
                "raise election_ticks or lower max_clock_drift"
            )

    def check_lazy_heartbeat(self) -> None:
        """Raises ValueError unless lazy heartbeats (raft `Config.lazy_heartbeat`) fit
        these timings. With them a follower may go two heartbeat intervals without a
        heartbeat, and a leader's lease evidence may be that old: two intervals must
        stay inside the election timeout (less the tick a follower may have just
        missed) and inside the lease, or followers campaign and leases lapse."""
        if 2 * self.heartbeat_ticks >= self.election_ticks - 1:
            raise ValueError(
                "lazy heartbeats need 2 * heartbeat_ticks < election_ticks - 1; "
                "lower heartbeat_ticks or turn lazy heartbeats off"
            )
        if self.lease_duration <= 2 * self.heartbeat_ticks * self.tick_interval:
            raise ValueError(
                "lazy heartbeats need a lease longer than two heartbeat intervals; "
                "lower heartbeat_ticks or turn lazy heartbeats off"
            )

    @property
    def lease_duration(self) -> float:
        safe_real = (self.election_ticks - 1) * self.tick_interval * (1 - self.max_clock_drift)
        return safe_real / (1 + self.max_clock_drift) - self.lease_margin
