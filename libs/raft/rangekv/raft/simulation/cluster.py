"""The discrete-event loop that drives a simulated Raft cluster.

Everything happens at a virtual global time taken from one priority queue
of events ``(time, seq, kind, payload)``; ``seq`` breaks ties in insertion
order, so the run is a pure function of the seed.  There are no threads, no
real clocks and no sets iterated in hash order.

Event kinds: a node's clock reaching its next tick boundary, a node's
driver handling a Ready (after a random "fsync" latency), a message
arriving, a client acting, a client timing out, and the nemesis' faults
(see :mod:`rangekv.raft.simulation.nemesis`).

After *every* event the cluster feeds the :class:`InvariantChecker` what it
can see: who is leader of which term, which nodes hold a VALID lease at this
instant, and (from Ready handling) what was persisted, committed and
applied.  The first contradiction stops the run.
"""

from __future__ import annotations

import hashlib
import heapq
import random
from collections import Counter, deque
from collections.abc import Callable
from typing import Any

from rangekv.raft import (
    ConfChangeType,
    Config,
    ConfState,
    Entry,
    HardState,
    MemoryStorage,
    Message,
    MessageType,
    ProposalDropped,
    RaftError,
    Snapshot,
    SnapshotMetadata,
    StateType,
)
from rangekv.raft.simulation.clients import Clients, Intent, PendingRead, PendingWrite, ReadMode
from rangekv.raft.simulation.config import SimConfig
from rangekv.raft.simulation.events import (
    CLIENT,
    CLIENT_TIMEOUT,
    DELIVER,
    LIVENESS,
    READY,
    RESTART,
    SHUTDOWN,
    SNAP_STATUS,
    TICK,
    UNREACHABLE,
)
from rangekv.raft.simulation.invariants import InvariantChecker, InvariantViolation
from rangekv.raft.simulation.kv import KVStateMachine
from rangekv.raft.simulation.nemesis import handle_fault_event
from rangekv.raft.simulation.network import Network
from rangekv.raft.simulation.node import ReadyOutcome, SimClock, SimNode
from rangekv.raft.simulation.quiescence import new_liveness
from rangekv.raft.simulation.quiescence import on_deliver as on_liveness
from rangekv.raft.simulation.quiescence import on_tick as quiescence_tick

FULL_LOG_CHECK_EVERY = 500
"""Events between full pairwise log-matching scans (the incremental check runs always)."""


def bootstrap_storage(voters: tuple[int, ...]) -> MemoryStorage:
    """The disk of an initial member: a snapshot at index 1 holding the membership.

    Not ``MemoryStorage(ConfState(voters))`` (a conf state at index 0): the
    initial membership must live in something that is *replicated*.  With
    the index-0 form the leader's log starts at index 1, so a node added
    later is caught up by plain appends, never sees the initial voters and
    ends up believing it is alone in a single-voter cluster (the simulator
    found exactly that split brain).  With a snapshot at index 1 every
    joiner needs a snapshot first, and snapshots carry the ConfState.
    """
    storage = MemoryStorage()
    meta = SnapshotMetadata(index=1, term=1, conf_state=ConfState(voters=voters))
    storage.apply_snapshot(Snapshot(meta, KVStateMachine().serialize()))
    storage.set_hard_state(HardState(term=1, vote=0, commit=1))
    return storage


class Cluster:
    """N simulated nodes, a network, clients and an invariant checker."""

    def __init__(self, seed: int, config: SimConfig) -> None:
        self.seed = seed
        self.cfg = config
        self.rng = random.Random(seed)
        self.now = 0.0
        self.queue: list[tuple[float, int, int, Any]] = []
        self._seq = 0
        self.events = 0
        self.trace: deque[str] = deque(maxlen=config.trace_tail)
        self._hash = hashlib.sha256()
        self.network = Network(self.rng, config)
        self.checker = InvariantChecker()
        self.clients = Clients(self.rng, config)
        self.nodes: dict[int, SimNode] = {}
        self.commit_seen: dict[int, int] = {}
        self.pending_leader_checks: dict[int, tuple[int, dict[int, int]]] = {}
        self.removal_applied: set[int] = set()
        self.partition_seq = 0
        self.counters: Counter[str] = Counter()
        """How often interesting things happened (coverage evidence for tuning)."""
        self._conf_indices: set[int] = set()
        self.faulty = True
        """False once the healing phase started: no new faults, no new client operations."""
        self.next_node_id = config.nodes + 1
        voters = tuple(range(1, config.nodes + 1))
        for nid in voters:
            self.create_node(nid, bootstrap_storage(voters))

    # -- plumbing ---------------------------------------------------------------

    def schedule(self, at: float, kind: int, payload: Any) -> None:
        self._seq += 1
        heapq.heappush(self.queue, (at, self._seq, kind, payload))

    def log(self, line: str) -> None:
        """Append to the trace (its tail goes into failure reports; all of it into the hash)."""
        text = f"{self.now:.4f} {line}"
        self.trace.append(text)
        self._hash.update(text.encode())
        self._hash.update(b"\n")

    @property
    def trace_hash(self) -> str:
        return self._hash.hexdigest()

    def _node_config(self, nid: int) -> Config:
        cfg = self.cfg
        return Config(
            id=nid,
            election_tick=cfg.election_tick,
            heartbeat_tick=cfg.heartbeat_tick,
            check_quorum=True,
            pre_vote=True,
            lease_duration=cfg.lease_duration,
            max_inflight_msgs=cfg.max_inflight_msgs,
            max_size_per_msg=cfg.max_size_per_msg,
            max_uncommitted_entries_size=cfg.max_uncommitted_entries_size,
            rng_seed=self.rng.randrange(1 << 32),
            lazy_commit=cfg.lazy_commit,
            lazy_heartbeat=cfg.lazy_heartbeat,
        )

    def new_clock_rate(self) -> float:
        if not self.cfg.faults.clock_drift:
            return 1.0
        d = self.cfg.drift
        return self.rng.uniform(1.0 - d, 1.0 + d)

    def create_node(self, nid: int, storage: MemoryStorage) -> SimNode:
        offset = self.rng.uniform(0, 1000.0) if self.cfg.faults.clock_drift else 0.0
        node = SimNode(nid, storage, SimClock(offset, self.new_clock_rate()))
        self.nodes[nid] = node
        self.commit_seen[nid] = 0
        self.start_node(node)
        return node

    def start_node(self, node: SimNode) -> None:
        node.start(
            self._node_config(node.id),
            self.now,
            self.cfg.tick_interval,
            new_liveness(self, node),
        )
        self.log(f"n{node.id} start inc={node.incarnation} applied={node.applied}")
        self.counters["restarts" if node.incarnation > 1 else "boots"] += 1
        self._schedule_tick(node)

    def crash_node(self, node: SimNode, why: str) -> None:
        node.crash()
        self.pending_leader_checks.pop(node.id, None)
        self.log(f"n{node.id} crash ({why})")
        self.counters["crashes"] += 1

    def _schedule_tick(self, node: SimNode) -> None:
        at = max(self.now, node.clock.global_at(node.next_tick_local))
        self.schedule(at, TICK, (node.id, node.incarnation, node.clock.epoch))

    def set_clock_rate(self, node: SimNode, rate: float) -> None:
        node.clock.set_rate(self.now, rate)
        self.log(f"n{node.id} clock rate {rate:.5f}")
        if node.alive:
            self._schedule_tick(node)

    def mark_dirty(self, node: SimNode) -> None:
        """Schedule Ready handling if the node has something to persist/send/apply."""
        if node.raft is None or node.ready_scheduled or not node.raft.has_ready():
            return
        node.ready_scheduled = True
        delay = self.rng.uniform(0.0, self.cfg.max_persist_latency)
        self.schedule(self.now + delay, READY, (node.id, node.incarnation))

    # -- queries used by clients and the nemesis ---------------------------------

    def live(self) -> list[SimNode]:
        return [n for _, n in sorted(self.nodes.items()) if n.alive]

    def leader(self) -> SimNode | None:
        """The live leader with the highest term (what a smart client would find)."""
        best: SimNode | None = None
        best_term = -1
        for node in self.live():
            term, state, _ = node.role()
            if state is StateType.LEADER and term > best_term:
                best, best_term = node, term
        return best

    def membership(self) -> ConfState:
        """The configuration as the current leader applied it (else any live node's view)."""
        lead = self.leader()
        if lead is not None:
            return lead.conf_state
        views = [n.conf_state for n in self.live() if n.conf_state.voters]
        return views[0] if views else ConfState()

    # -- the event loop ---------------------------------------------------------

    def run_until(self, end: float, stop: Callable[[], bool] | None = None) -> bool:
        """Process events up to virtual time ``end``; True if ``stop()`` became true."""
        queue = self.queue
        while queue and queue[0][0] <= end:
            at, _, kind, payload = heapq.heappop(queue)
            self.now = at
            self.events += 1
            self._dispatch(kind, payload)
            self._after_event()
            if stop is not None and self.events % 16 == 0 and stop():
                return True
        self.now = max(self.now, end)
        return stop is not None and stop()

    def _dispatch(self, kind: int, payload: Any) -> None:
        if kind == TICK:
            self._on_tick(*payload)
        elif kind == READY:
            self._on_ready(*payload)
        elif kind == DELIVER:
            self._on_deliver(payload)
        elif kind == CLIENT:
            self._on_client(payload)
        elif kind == CLIENT_TIMEOUT:
            self._on_client_timeout(payload)
        elif kind == SNAP_STATUS:
            self._on_snap_status(*payload)
        elif kind == UNREACHABLE:
            self._on_unreachable(*payload)
        elif kind == LIVENESS:
            on_liveness(self, payload)
        else:
            handle_fault_event(self, kind, payload)

    def _on_tick(self, nid: int, incarnation: int, epoch: int) -> None:
        node = self.nodes[nid]
        if not node.alive or node.incarnation != incarnation or node.clock.epoch != epoch:
            return
        node.node().tick(node.clock.now(self.now))
        node.ticks += 1
        quiescence_tick(self, node)
        node.next_tick_local += self.cfg.tick_interval
        self._schedule_tick(node)
        self.mark_dirty(node)

    def _on_deliver(self, msg: Message) -> None:
        node = self.nodes.get(msg.to)
        delivered = (
            node is not None
            and node.alive
            and not node.removed
            and self.network.link_up(msg.sender, msg.to)
        )
        if msg.type is MessageType.SNAP:
            at = self.now + self.rng.uniform(0.0, self.cfg.max_delay)
            self.schedule(at, SNAP_STATUS, (msg.sender, msg.to, not delivered))
        if not delivered:
            return
        assert node is not None
        self.log(
            f"{msg.type.name} {msg.sender}->{msg.to} t{msg.term} i{msg.index} lt{msg.log_term} "
            f"c{msg.commit} n{len(msg.entries)} rj{int(msg.reject)} rd{msg.round}"
        )
        if msg.type is MessageType.TIMEOUT_NOW:
            self.counters["timeout_now_delivered"] += 1
        node.node().step(msg)
        self.mark_dirty(node)

    def _on_snap_status(self, leader_id: int, to: int, failed: bool) -> None:
        node = self.nodes[leader_id]
        if node.alive:
            node.node().report_snapshot(to, failed)
            self.log(f"n{leader_id} report_snapshot to={to} failed={failed}")
            self.mark_dirty(node)

    def _on_unreachable(self, sender: int, to: int) -> None:
        node = self.nodes[sender]
        if node.alive:
            node.node().report_unreachable(to)
            self.mark_dirty(node)

    def send(self, msg: Message) -> None:
        times = self.network.send(msg.sender, msg.to, self.now)
        for at in times:
            self.schedule(at, DELIVER, msg)
        if times:
            return
        later = self.now + self.rng.uniform(0.0, self.cfg.max_delay)
        if msg.type is MessageType.SNAP:
            self.schedule(later, SNAP_STATUS, (msg.sender, msg.to, True))
        elif (
            not self.network.link_up(msg.sender, msg.to)
            and self.rng.random() < self.cfg.unreachable_report_rate
        ):
            # A real transport notices a broken connection (not a single lost packet).
            self.schedule(later, UNREACHABLE, (msg.sender, msg.to))

    # -- Ready handling and what the checker learns from it ---------------------------

    def _on_ready(self, nid: int, incarnation: int) -> None:
        node = self.nodes[nid]
        if not node.alive or node.incarnation != incarnation:
            return
        node.ready_scheduled = False
        crash = (
            self.faulty
            and self.cfg.faults.crash
            and self.rng.random() < self.cfg.crash_after_persist_rate
        )
        out = node.handle_ready(self.send, crash, self.cfg.unsafe_send_before_persist)
        if out is None:
            return
        if out.persisted:
            self._observe_persisted(node, out)
        if out.crashed:
            self.log(f"n{nid} crash after persist")
            self.counters["crashes_after_persist"] += 1
            self.pending_leader_checks.pop(nid, None)
            self._schedule_restart(node)
            return
        self._observe_applied(node, out)
        for rs in out.ready.read_states:
            r = self.clients.reads.get(rs.request_ctx)
            if r is not None and r.node_id == nid and r.incarnation == node.incarnation:
                r.index = rs.index
        self._serve_reads(node)
        if self.cfg.faults.compaction:
            line = node.maybe_compact(self.rng, self.cfg.compact_every)
            if line:
                self.log(line)
                self.counters["compactions"] += 1
        self.mark_dirty(node)

    def _schedule_restart(self, node: SimNode) -> None:
        self.schedule(self.now + self.rng.uniform(1.0, 15.0), RESTART, node.id)

    def _observe_persisted(self, node: SimNode, out: ReadyOutcome) -> None:
        rd, storage, chk = out.ready, node.storage, self.checker
        nid = node.id
        if rd.snapshot is not None and not rd.snapshot.is_empty():
            snap = rd.snapshot
            chk.observe_commit(nid, snap.metadata.index, snap.metadata.term)
            state = KVStateMachine.deserialize(snap.data).fingerprint()
            chk.observe_snapshot_state(nid, snap.metadata.index, state)
            self.commit_seen[nid] = max(self.commit_seen[nid], snap.metadata.index)
            self.log(f"n{nid} install snapshot@{snap.metadata.index}/{snap.metadata.term}")
            self.counters["snapshots_installed"] += 1
        first = storage.first_index()
        for e in rd.entries:
            prev = storage.term(e.index - 1) if e.index - 1 >= first - 1 else None
            chk.observe_entry(nid, e, prev, self.commit_seen[nid])
        hs = rd.hard_state
        if hs is not None:
            chk.observe_hard_state(nid, out.prev_hard_state, hs)
            last = storage.last_index()
            if hs.commit > last:
                raise InvariantViolation(
                    "commit beyond log", f"n{nid} persisted commit {hs.commit} > last index {last}"
                )
            lo = max(self.commit_seen[nid] + 1, first)
            for i in range(lo, hs.commit + 1):
                chk.observe_commit(nid, i, storage.term(i))
            self.commit_seen[nid] = max(self.commit_seen[nid], hs.commit)
        pending = self.pending_leader_checks.pop(nid, None)
        if pending is not None and node.alive:
            term, committed = pending
            st = node.node().status()
            if st.term == term and st.state is StateType.LEADER:
                saved = chk.committed
                chk.committed = committed
                try:
                    chk.check_leader_log(nid, term, first, storage.last_index(), storage.term)
                finally:
                    chk.committed = saved
                self.counters["leader_logs_checked"] += 1

    def _observe_applied(self, node: SimNode, out: ReadyOutcome) -> None:
        chk, nid = self.checker, node.id
        for a in out.applied:
            chk.observe_applied(nid, a.entry, a.state)
            if a.command is not None:
                w = self.clients.writes.get(a.command.request_id)
                if (
                    w is not None
                    and w.node_id == nid
                    and w.incarnation == node.incarnation
                    and a.result is not None
                ):
                    chk.observe_ack(nid, a.entry)
                    op = self.clients.write_acked(w, a.result, self.now)
                    self.log(f"ack {op.describe()} @{a.entry.index}")
                    self._next_client_action(w.slot)
            elif a.conf_change is not None:
                cc = a.conf_change
                self.log(f"n{nid} applied conf {cc.type.name} {cc.node_id} -> {a.conf_state}")
                if a.entry.index not in self._conf_indices:
                    self._conf_indices.add(a.entry.index)
                    self.counters[f"conf_{cc.type.name.lower()}"] += 1
                if cc.type is ConfChangeType.REMOVE_NODE and cc.node_id not in self.removal_applied:
                    self.removal_applied.add(cc.node_id)
                    at = self.now + self.rng.uniform(0.0, 10.0)
                    self.schedule(at, SHUTDOWN, cc.node_id)

    def _serve_reads(self, node: SimNode) -> None:
        for r in [r for _, r in sorted(self.clients.reads.items())]:
            if r.node_id != node.id or r.index is None or node.applied < r.index:
                continue
            value = node.kv.get(r.key)
            self.log(f"read {r.mode.value} c{r.client} {r.key!r}={value!r} @n{node.id}")
            self.counters[f"reads_{r.mode.value}"] += 1
            self.clients.read_done(r, value, self.now)
            self._next_client_action(r.slot)

    # -- after every event ------------------------------------------------------------

    def _after_event(self) -> None:
        chk = self.checker
        now = self.now
        holders: list[int] = []
        roles: dict[int, tuple[int, StateType]] = {}
        for nid, node in sorted(self.nodes.items()):
            if node.raft is None:
                continue
            term, state, _ = node.role()
            roles[nid] = (term, state)
            if state is StateType.LEADER and chk.observe_leader(term, nid):
                self.log(f"n{nid} leader of term {term}")
                self.counters["elections_won"] += 1
                self.pending_leader_checks[nid] = (term, dict(chk.committed))
            if node.lease_valid(now):
                holders.append(nid)
        chk.observe_leases(now, holders)
        for w in [w for _, w in sorted(self.clients.writes.items())]:
            node = self.nodes[w.node_id]
            role = roles.get(w.node_id)
            if (
                role is None
                or node.incarnation != w.incarnation
                or role != (w.term, StateType.LEADER)
            ):
                self.log(f"write r{w.command.request_id} unknown (n{w.node_id} lost it)")
                self.clients.write_unknown(w)
                self._next_client_action(w.slot)
        for r in [r for _, r in sorted(self.clients.reads.items())]:
            node = self.nodes[r.node_id]
            if not node.alive or node.incarnation != r.incarnation:
                self.clients.read_abandoned(r)
                self._next_client_action(r.slot)
        if self.events % FULL_LOG_CHECK_EVERY == 0:
            self.check_all_logs()

    def check_all_logs(self) -> None:
        logs: dict[int, list[Entry]] = {}
        for nid, node in sorted(self.nodes.items()):
            st = node.storage
            if st.last_index() >= st.first_index():
                logs[nid] = st.entries(st.first_index(), st.last_index() + 1, 1 << 62)
        self.checker.check_logs_match(logs)

    # -- clients ----------------------------------------------------------------------

    def _next_client_action(self, slot: int) -> None:
        if self.faulty:
            self.schedule(self.now + self.clients.think_time(), CLIENT, slot)

    def _pick_node(self, leader_bias: float) -> SimNode | None:
        live = [n for n in self.live() if not n.removed]
        if not live:
            return None
        if self.rng.random() < leader_bias:
            lead = self.leader()
            if lead is not None:
                return lead
        return self.rng.choice(live)

    def _on_client(self, slot: int) -> None:
        if not self.faulty or slot in self.clients.busy:
            return
        intent = self.clients.next_intent(slot)
        if intent.command is None:
            self._start_read(intent)
        else:
            self._start_write(intent)

    def _start_write(self, intent: Intent) -> None:
        assert intent.command is not None
        node = self._pick_node(0.85)
        if node is None:
            self.clients.write_failed(intent, self.now)
            self._next_client_action(intent.slot)
            return
        raft = node.node()
        try:
            raft.propose(intent.command.encode())
        except ProposalDropped:
            self.clients.write_failed(intent, self.now)
            self._next_client_action(intent.slot)
            return
        term = node.role()[0]
        w = PendingWrite(
            intent.slot, intent.client, intent.command, self.now, node.id, node.incarnation, term
        )
        self.clients.writes[intent.command.request_id] = w
        self.log(f"propose r{intent.command.request_id} c{intent.client} at n{node.id} t{term}")
        self.schedule(
            self.now + self.cfg.op_timeout, CLIENT_TIMEOUT, ("w", intent.command.request_id)
        )
        self.mark_dirty(node)

    def _start_read(self, intent: Intent) -> None:
        mode = intent.read_mode
        assert mode is not None
        node = self._pick_node(0.85 if mode is ReadMode.LEASE else 0.3)
        if node is None:
            self.clients.read_abandoned(intent)
            self._next_client_action(intent.slot)
            return
        raft = node.node()
        ctx = f"rd{self.events}.{intent.slot}".encode()
        r = PendingRead(
            intent.slot, intent.client, intent.key, self.now, node.id, node.incarnation, mode, ctx
        )
        if mode is ReadMode.LEASE and self.cfg.unsafe_reads:
            r.index = 0  # deliberately broken: whatever this node has applied
        elif mode is ReadMode.LEASE:
            if not node.lease_valid(self.now):
                self.clients.read_abandoned(intent)
                self._next_client_action(intent.slot)
                return
            # Serve at an applied state that covers everything committed so far:
            # a write acked by another node is committed, hence <= our commit.
            r.index = raft.status().commit
        else:
            try:
                raft.read_index(ctx)
            except RaftError:
                self.clients.read_abandoned(intent)
                self._next_client_action(intent.slot)
                return
        self.clients.reads[ctx] = r
        self.schedule(self.now + self.cfg.op_timeout, CLIENT_TIMEOUT, ("r", ctx))
        self._serve_reads(node)
        self.mark_dirty(node)

    def _on_client_timeout(self, payload: tuple[str, Any]) -> None:
        what, key = payload
        if what == "w":
            w = self.clients.writes.get(key)
            if w is not None:
                self.log(f"write r{key} timed out")
                self.clients.write_unknown(w)
                self._next_client_action(w.slot)
        else:
            r = self.clients.reads.get(key)
            if r is not None:
                self.clients.read_abandoned(r)
                self._next_client_action(r.slot)
