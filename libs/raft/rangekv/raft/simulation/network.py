"""A lossy, reordering, partitionable network between simulated nodes.

The network does not own the event queue: :meth:`Network.send` decides the
fate of one message (dropped, delivered once, delivered twice) and returns
the delivery times; the cluster schedules them.  At delivery time the cluster
asks :meth:`Network.link_up` again, so a partition that starts while a
message is in flight still cuts it -- exactly as a real cable pull would.

Partitions are sets of *directed* blocked links, so asymmetric partitions
(A hears B but B does not hear A) are first-class; they are the ones that
trip up CheckQuorum and PreVote in practice.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from rangekv.raft.simulation.config import SimConfig


class Network:
    """Decides delivery of each message from the run's seeded RNG."""

    def __init__(self, rng: random.Random, config: SimConfig) -> None:
        self._rng = rng
        self._cfg = config
        self._faults = config.faults
        self.blocked: set[tuple[int, int]] = set()
        """Directed links ``(sender, receiver)`` currently cut."""
        self.slow: dict[tuple[int, int], float] = {}
        """Directed links currently congested, with the extra latency they add."""
        self.quiet = False
        """When set (the healing phase) no message is dropped, duplicated or long-delayed."""
        self._fifo_last: dict[tuple[int, int], float] = {}
        self.sent = 0
        self.dropped = 0
        self.duplicated = 0

    # -- partitions ---------------------------------------------------------

    def link_up(self, sender: int, receiver: int) -> bool:
        """True when messages from ``sender`` can currently reach ``receiver``."""
        return (sender, receiver) not in self.blocked

    def heal(self) -> None:
        """Remove every partition and congestion."""
        self.blocked.clear()
        self.slow.clear()

    @property
    def disturbed(self) -> bool:
        """True while a partition or congestion is in place."""
        return bool(self.blocked or self.slow)

    def partition(self, ids: Sequence[int], victim: int | None = None) -> str:  # noqa: C901 -- the nemesis's catalogue of partition patterns, one branch each
        """Cut a random pattern of links among ``ids``; returns a description for the trace.

        Patterns: a symmetric split into two random groups, the isolation of
        one node, an asymmetric cut (one direction of a split only), random
        directed link cuts, and congestion: a few directed links from one node
        (usually the leader) that deliver everything, but up to several
        election timeouts late -- the way stale TIMEOUT_NOW, votes and appends
        arrive long after the situation that produced them is over.
        ``victim`` (usually the leader) is the node an isolation cuts off or
        whose outgoing links congest, when given.
        """
        ids = sorted(ids)
        if len(ids) < 2:
            return "partition none"
        rng = self._rng
        pattern = rng.choice(("split", "isolate", "oneway", "links", "slow"))
        if pattern == "slow":
            src = victim if victim in ids else rng.choice(ids)
            for dst in ids:
                if dst != src and rng.random() < 0.5:
                    self.slow[(src, dst)] = rng.uniform(2.0, self._cfg.long_delay_max)
            return f"congestion from {src}: " + ", ".join(
                f"->{d} +{x:.1f}" for (_, d), x in sorted(self.slow.items())
            )
        if pattern == "isolate":
            if victim is None or victim not in ids:
                victim = rng.choice(ids)
            side_a, side_b = [victim], [i for i in ids if i != victim]
        else:
            shuffled = list(ids)
            rng.shuffle(shuffled)
            cut = rng.randint(1, len(ids) - 1)
            side_a, side_b = sorted(shuffled[:cut]), sorted(shuffled[cut:])
        if pattern == "links":
            for a in ids:
                for b in ids:
                    if a != b and rng.random() < 0.3:
                        self.blocked.add((a, b))
            return f"partition links {sorted(self.blocked)}"
        for a in side_a:
            for b in side_b:
                self.blocked.add((a, b))
                if pattern != "oneway":
                    self.blocked.add((b, a))
        arrow = "-/->" if pattern == "oneway" else "<-/->"
        return f"partition {pattern} {side_a} {arrow} {side_b}"

    # -- delivery -----------------------------------------------------------

    def _latency(self) -> float:
        cfg, rng = self._cfg, self._rng
        if not self._faults.delay:
            return cfg.fixed_delay
        if not self.quiet and rng.random() < cfg.long_delay_rate:
            return rng.uniform(cfg.max_delay, cfg.long_delay_max)
        return rng.uniform(cfg.min_delay, cfg.max_delay)

    def send(self, sender: int, receiver: int, now: float) -> list[float]:
        """Delivery times for one message sent at global time ``now`` (empty: lost)."""
        self.sent += 1
        cfg, rng = self._cfg, self._rng
        if not self.link_up(sender, receiver):
            self.dropped += 1
            return []
        if not self.quiet and self._faults.drop and rng.random() < cfg.drop_rate:
            self.dropped += 1
            return []
        extra = self.slow.get((sender, receiver), 0.0)
        times = [now + extra + self._latency()]
        if not self.quiet and self._faults.duplicate and rng.random() < cfg.duplicate_rate:
            self.duplicated += 1
            times.append(now + extra + self._latency())
        if not self._faults.reorder:
            # Per-link FIFO: never deliver before the previous message on the link.
            link = (sender, receiver)
            last = self._fifo_last.get(link, 0.0)
            fifo: list[float] = []
            for t in sorted(times):
                last = max(t, last + 1e-6)
                fifo.append(last)
            self._fifo_last[link] = last
            times = fifo
        return times
