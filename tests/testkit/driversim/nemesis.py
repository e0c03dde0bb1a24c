"""The nemesis of a driver simulation: one event per step, drawn from the seed's rng.

Each step draws ONE event by weight (`Weights`) and applies it to the world;
an event that does not apply now (nothing to heal, no node down) becomes a
tick. The events:

* `op` -- a client operation starts (GET / PUT / CAS; `clients.SimClients`);
* `tick` -- time moves 1-3 ticks on every node;
* `cut` / `heal` -- a link stops delivering (one way, or both ways) / works
  again; `isolate` cuts a node off both ways from every other node;
* `hold` / `release` -- a link queues its messages / delivers them late (all
  at once, after whatever other links delivered meanwhile: delay and reorder);
* `garble` -- the messages queued on a held link are reordered, some
  duplicated, some lost (they go when the link is released);
* `crash` / `restart` -- a node's process dies, losing what its disks had not
  synced (a power cut: NOSYNC seeds lose applied state) / starts again from its
  disks (at most a minority is down at once);
* `truncate` -- a node truncates its raft logs (with a small retention, a
  lagging replica then needs a snapshot);
* `stall` / `unstall` -- snapshot streams from one node to another stop
  after their first chunk / go on (a stream stalled for many steps arrives
  with old state: what the stale-snapshot race needs);
* `transfer` -- a range's leader hands leadership to another replica;
* `split` -- a range's leaseholder splits it at a key strictly inside it
  (one split at a time, at most `MAX_RANGES` ranges): the split transaction's
  record through raft, the split trigger applied by every replica;
* `clock` -- a node's wall clock moves to an offset within +-40% of the maximum
  clock offset (so any two clocks stay within it).

`Weights` biases the draw. The default is tuned so that seeds reach the
snapshot paths, not only the log paths, and the stale-snapshot race among them:
truncation mostly on a leader's node, one node's snapshot streams stalled most
of the time (mostly a leader's), frequent leadership moves (transfers to
caught-up replicas, isolated leaders), few crashes (a crash breaks the streams
of its node).
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass, fields

from testkit.driversim.clients import SimClients
from testkit.driversim.invariants import Invariants
from testkit.driversim.world import SimWorld

__all__ = ["MAX_RANGES", "Nemesis", "Weights"]

#: Splits stop once this many ranges exist.
MAX_RANGES = 6


@dataclass(frozen=True, slots=True)
class Weights:
    """Relative odds of each event per step (see the module docstring)."""

    op: int = 50
    tick: int = 20
    cut: int = 4
    heal: int = 6
    isolate: int = 8
    hold: int = 3
    release: int = 4
    crash: int = 1
    restart: int = 2
    truncate: int = 8
    stall: int = 4
    unstall: int = 1
    transfer: int = 12
    clock: int = 2
    garble: int = 3
    split: int = 2

    def table(self) -> tuple[list[str], list[int]]:
        names = [f.name for f in fields(self)]
        return names, [getattr(self, n) for n in names]


class Nemesis:
    """Draws and applies events (see the module docstring)."""

    def __init__(
        self,
        world: SimWorld,
        clients: SimClients,
        invariants: Invariants,
        rng: random.Random,
        weights: Weights,
        *,
        max_ops_in_flight: int,
        max_clock_offset_ns: int,
    ) -> None:
        self.world = world
        self.clients = clients
        self.invariants = invariants
        self.rng = rng
        self.names, self.weights = weights.table()
        self.max_ops = max_ops_in_flight
        self.max_offset = max_clock_offset_ns
        self.split_task: asyncio.Task[None] | None = None
        self.cuts: set[tuple[int, int]] = set()
        self.holds: set[tuple[int, int]] = set()

    def _pair(self) -> tuple[int, int]:
        src, dst = self.rng.sample(self.world.node_ids, 2)
        return src, dst

    async def step(self) -> str:
        """Draw one event, apply it; returns its trace line."""
        name = self.rng.choices(self.names, self.weights)[0]
        line = await getattr(self, f"_{name}")()
        if line is None:
            self.world.tick()
            return "tick"
        return str(line)

    # --- events (None: does not apply now) ------------------------------------------------

    async def _op(self) -> str | None:
        if self.clients.in_flight >= self.max_ops:
            return None
        op = self.clients.draw(self.rng)
        self.clients.start(op, self.rng.choice(self.world.node_ids))
        return f"start {op.describe()}"

    async def _tick(self) -> str:
        n = self.rng.randint(1, 3)
        self.world.tick(n)
        return f"tick x{n}"

    async def _cut(self) -> str:
        src, dst = self._pair()
        router = self.world.cluster.router
        both = self.rng.random() < 0.5
        for a, b in ((src, dst), (dst, src)) if both else ((src, dst),):
            router.cut(a, b)
            self.cuts.add((a, b))
        return f"cut {src}{'<' if both else ''}->{dst}"

    async def _isolate(self) -> str:
        """Half the time a range leader's node (the others elect a new leader)."""
        lead = self.world.leader(self.rng.choice(self.world.range_ids))
        if lead is not None and self.rng.random() < 0.5:
            node = lead[0]
        else:
            node = self.rng.choice(self.world.node_ids)
        router = self.world.cluster.router
        for other in self.world.node_ids:
            if other != node:
                for a, b in ((node, other), (other, node)):
                    router.cut(a, b)
                    self.cuts.add((a, b))
        return f"isolate {node}"

    async def _heal(self) -> str | None:
        if not self.cuts:
            return None
        if self.rng.random() < 0.3:
            healed = sorted(self.cuts)
        else:
            healed = [self.rng.choice(sorted(self.cuts))]
        for a, b in healed:
            self.world.cluster.router.heal(a, b)
            self.cuts.discard((a, b))
        return "heal " + " ".join(f"{a}->{b}" for a, b in healed)

    async def _hold(self) -> str:
        src, dst = self._pair()
        self.world.cluster.router.hold(src, dst)
        self.holds.add((src, dst))
        return f"hold {src}->{dst}"

    async def _release(self) -> str | None:
        if not self.holds:
            return None
        src, dst = self.rng.choice(sorted(self.holds))
        self.holds.discard((src, dst))
        queued = len(self.world.cluster.router.link(src, dst).queue)
        self.world.cluster.router.release(src, dst)
        return f"release {src}->{dst} ({queued} late)"

    async def _garble(self) -> str | None:
        router = self.world.cluster.router
        links = [p for p in sorted(self.holds) if router.link(*p).queue]
        if not links:
            return None
        src, dst = self.rng.choice(links)
        queued = router.take_held(src, dst)
        garbled = []
        for inbound in queued:
            roll = self.rng.random()
            if roll < 0.15:
                continue  # lost
            garbled.append(inbound)
            if roll > 0.8:
                garbled.append(inbound)  # duplicated
        self.rng.shuffle(garbled)
        router.link(src, dst).queue.extend(garbled)
        return f"garble {src}->{dst} ({len(queued)} -> {len(garbled)} messages, reordered)"

    async def _crash(self) -> str | None:
        live = self.world.live_nodes()
        if len(live) - 1 <= len(self.world.node_ids) // 2:
            return None
        node = self.rng.choice(live)
        lost = await self.world.crash(node)
        self.invariants.forget_process(node)
        return f"crash {node} (lost {lost} unsynced state batches)"

    async def _restart(self) -> str | None:
        down = [n for n in self.world.node_ids if not self.world.up(n)]
        if not down:
            return None
        node = self.rng.choice(down)
        await self.world.restart(node)
        return f"restart {node}"

    async def _truncate(self) -> str | None:
        """Mostly on a range leader's node (whose log a lagging replica needs)."""
        lead = self.world.leader(self.rng.choice(self.world.range_ids))
        if lead is not None and self.rng.random() < 0.8:
            node = lead[0]
        else:
            node = self.rng.choice(self.world.live_nodes())
        store = self.world.store(node)
        assert store is not None
        removed = await store.truncate_logs()
        return f"truncate {node} ({removed})"

    async def _stall(self) -> str:
        """One node's snapshot streams go slow -- mostly a range leader's (who sends
        snapshots): every stream it starts from now on stops after its first chunk
        until `unstall` (or a crash of either end) lets it go. Only one node's: a new
        leader's snapshot to the same lagging replica goes through meanwhile. So the
        streams of the node stalled before go on now (late)."""
        let_go = await self._unstall()
        lead = self.world.leader(self.rng.choice(self.world.range_ids))
        if lead is not None and self.rng.random() < 0.8:
            src = lead[0]
        else:
            src = self.rng.choice(self.world.node_ids)
        for dst in self.world.node_ids:
            if dst != src:
                self.world.hold_snapshots(src, dst)
        return f"stall snapshots from {src}" + (" after " + let_go if let_go else "")

    async def _unstall(self) -> str | None:
        """The stalled streams go on (late: what they carry may be old by now)."""
        held = sorted(self.world.held_snapshots)
        if not held:
            return None
        for src, dst in held:
            self.world.release_snapshots(src, dst)
        return "unstall snapshots"

    async def _transfer(self) -> str | None:
        range_id = self.rng.choice(self.world.range_ids)
        lead = self.world.leader(range_id)
        if lead is None:
            return None
        node, replica = lead
        targets = [r for n, r in self.world.live_replicas(range_id) if n != node]
        if not targets:
            return None
        if self.rng.random() < 0.7:
            # Mostly to a replica that is caught up, as a rebalancer would.
            best = max(r.applied_index for r in targets)
            targets = [r for r in targets if r.applied_index == best]
        target = self.rng.choice(targets)
        replica.transfer_leadership(target.replica_id)
        return f"transfer range {range_id} {node}->replica {target.replica_id}"

    async def _split(self) -> str | None:
        ranges = self.world.range_ids
        if (self.split_task is not None and not self.split_task.done()) or len(
            ranges
        ) >= MAX_RANGES:
            return None
        range_id = self.rng.choice(ranges)
        holders = self.world.leaseholders(range_id)
        if not holders:
            return None
        node = holders[0]
        replica = self.world.replica(node, range_id)
        assert replica is not None
        desc = replica.descriptor
        inside = [k for k in self.clients.keys if k != desc.start_key and desc.contains_key(k)]
        if not inside:
            return None
        key = self.rng.choice(inside)
        right_id = max(ranges) + 1

        async def split() -> None:
            outcome = await self.world.split(node, range_id, key, right_id)
            self.world.log(f"split of range {range_id} at {key!r}: {outcome}")

        self.split_task = asyncio.get_running_loop().create_task(split())
        return f"split range {range_id} at {key!r} on {node} (right: range {right_id})"

    async def stop_splits(self) -> None:
        if self.split_task is not None and not self.split_task.done():
            self.split_task.cancel()
            await asyncio.gather(self.split_task, return_exceptions=True)

    async def _clock(self) -> str:
        node = self.rng.choice(self.world.node_ids)
        bound = int(self.max_offset * 0.4)
        offset = self.rng.randint(-bound, bound)
        self.world.cluster.clock.offsets_ns[node] = offset
        return f"clock {node} {offset / 1e6:+.1f}ms"
