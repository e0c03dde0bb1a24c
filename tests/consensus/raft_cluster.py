"""A tiny deterministic in-memory cluster for driving RawNodes in tests.

Messages are queued in one FIFO and delivered explicitly, so a test controls
every interleaving. The driver loop follows OVERVIEW.md: persist, send,
apply, advance. Each node's "state machine" is the list of applied NORMAL
entry payloads; snapshots serialise that list.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from rangekv.raft import (
    ConfChange,
    Config,
    ConfState,
    EntryType,
    MemoryStorage,
    Message,
    MessageType,
    RawNode,
    ReadState,
    Ready,
    Snapshot,
    SnapshotMetadata,
    StateType,
)


def fire_election_timer(node: RawNode) -> None:
    """What `node`'s election timer firing does: start an election (with pre-vote when
    configured). Tests use it to put an election exactly where they want it without
    ticking the node through a whole timeout; `RawNode.campaign()` is the driver's
    call and refuses while a leader may still hold a lease that rests on this node
    (`Raft.campaign_refusal`), which a real timeout never meets."""
    nid = node.raft.id
    node.raft.step(Message(MessageType.HUP, nid, nid))


def encode_state(items: list[bytes]) -> bytes:
    return json.dumps([d.hex() for d in items]).encode()


def decode_state(data: bytes) -> list[bytes]:
    return [bytes.fromhex(h) for h in json.loads(data)] if data else []


@dataclass
class Peer:
    node: RawNode
    storage: MemoryStorage
    config: Config
    applied: list[bytes] = field(default_factory=list)
    applied_index: int = 0
    read_states: list[ReadState] = field(default_factory=list)
    conf_state: ConfState = field(default_factory=ConfState)


class Cluster:
    """Nodes, their storages, and a message queue with optional drop rules."""

    def __init__(
        self,
        ids: Iterable[int],
        *,
        learners: Iterable[int] = (),
        snapshot_index: int = 0,
        auto_report_snapshot: bool = True,
        **config: object,
    ) -> None:
        self.ids = sorted(ids)
        self.learner_ids = sorted(learners)
        self.config_kwargs = config
        self.peers: dict[int, Peer] = {}
        self.queue: list[Message] = []
        self.dropped: set[tuple[int, int]] = set()
        self.drop_types: set[MessageType] = set()
        self.auto_report_snapshot = auto_report_snapshot
        self.delivered: list[Message] = []
        cs = ConfState(tuple(self.ids), tuple(self.learner_ids))
        for nid in sorted(set(self.ids) | set(self.learner_ids)):
            self.add_node(nid, cs, snapshot_index)

    # -- membership of the harness ------------------------------------------

    def make_config(self, nid: int, **overrides: object) -> Config:
        kw: dict[str, object] = {"rng_seed": 7, **self.config_kwargs, **overrides}
        return Config(id=nid, **kw)  # type: ignore[arg-type]

    def add_node(self, nid: int, cs: ConfState | None = None, snapshot_index: int = 0) -> Peer:
        storage = MemoryStorage(cs)
        if cs is not None and snapshot_index:
            storage.apply_snapshot(Snapshot(SnapshotMetadata(snapshot_index, 1, cs)))
        config = self.make_config(nid)
        peer = Peer(RawNode(config, storage), storage, config)
        peer.applied_index = snapshot_index
        peer.conf_state = cs or ConfState()
        self.peers[nid] = peer
        return peer

    def restart(self, nid: int, **overrides: object) -> RawNode:
        """Crash and restart `nid`: volatile state is lost, storage survives."""
        p = self.peers[nid]
        snap = p.storage.snapshot()
        p.config = self.make_config(nid, applied=snap.index, **overrides)
        p.node = RawNode(p.config, p.storage)
        p.applied = decode_state(snap.data) if snap.data else []
        p.applied_index = snap.index
        p.conf_state = snap.metadata.conf_state
        for m in self.queue:
            if m.to == nid:
                self.report_lost(m)
        self.queue = [m for m in self.queue if m.to != nid]
        return p.node

    def node(self, nid: int) -> RawNode:
        return self.peers[nid].node

    # -- driving ---------------------------------------------------------------

    def process_ready(self, nid: int) -> Ready | None:
        p = self.peers[nid]
        if not p.node.has_ready():
            return None
        rd = p.node.ready()
        if rd.snapshot is not None:
            p.storage.apply_snapshot(rd.snapshot)
            p.applied = decode_state(rd.snapshot.data)
            p.applied_index = rd.snapshot.index
            p.conf_state = rd.snapshot.metadata.conf_state
        p.storage.append(rd.entries)
        if rd.hard_state is not None:
            p.storage.set_hard_state(rd.hard_state)
        self.queue.extend(rd.messages)
        for e in rd.committed_entries:
            if e.type is EntryType.CONF_CHANGE:
                p.conf_state = p.node.apply_conf_change(ConfChange.decode(e.data))
            elif e.data:
                p.applied.append(e.data)
            p.applied_index = e.index
        p.read_states.extend(rd.read_states)
        p.node.advance(rd)
        return rd

    def process_all(self) -> bool:
        did = False
        for nid in sorted(self.peers):
            if self.process_ready(nid) is not None:
                did = True
        return did

    def _blocked(self, m: Message) -> bool:
        return (m.sender, m.to) in self.dropped or m.type in self.drop_types

    def deliver(self, pred: Callable[[Message], bool] | None = None) -> int:
        """Deliver queued messages (those matching `pred`), dropping blocked ones."""
        batch, self.queue = self.queue, []
        n = 0
        for m in batch:
            if pred is not None and not pred(m):
                self.queue.append(m)
                continue
            n += self.deliver_one(m)
        return n

    def deliver_one(self, m: Message) -> bool:
        """Step one message into its recipient unless a drop rule blocks it."""
        if self._blocked(m) or m.to not in self.peers:
            self.report_lost(m)
            return False
        self.delivered.append(m)
        self.peers[m.to].node.step(m)
        if m.type is MessageType.SNAP and self.auto_report_snapshot:
            leader = self.peers.get(m.sender)
            if leader is not None:
                leader.node.report_snapshot(m.to, failed=False)
        return True

    def report_lost(self, m: Message) -> None:
        """A transport learns that a snapshot stream failed; tell the leader like one."""
        if m.type is MessageType.SNAP and self.auto_report_snapshot:
            leader = self.peers.get(m.sender)
            if leader is not None:
                leader.node.report_snapshot(m.to, failed=True)

    def stabilize(self, max_rounds: int = 10_000) -> None:
        for _ in range(max_rounds):
            did = self.process_all()
            if self.queue:
                self.deliver()
                did = True
            if not did:
                return
        raise AssertionError("cluster did not stabilize")

    def tick(self, nid: int, n: int = 1, now: float = 0.0) -> None:
        for _ in range(n):
            self.peers[nid].node.tick(now)

    def tick_all(self, n: int = 1, now: float = 0.0, stabilize: bool = True) -> None:
        for _ in range(n):
            for nid in sorted(self.peers):
                self.peers[nid].node.tick(now)
            if stabilize:
                self.stabilize()

    def elect(self, nid: int) -> None:
        fire_election_timer(self.node(nid))
        self.stabilize()
        assert self.node(nid).raft.state is StateType.LEADER, f"{nid} did not win"

    def isolate(self, nid: int) -> None:
        for other in self.peers:
            if other != nid:
                self.dropped.add((nid, other))
                self.dropped.add((other, nid))

    def partition(self, *groups: Iterable[int]) -> None:
        sets = [set(g) for g in groups]
        for a in self.peers:
            for b in self.peers:
                if a != b and not any(a in s and b in s for s in sets):
                    self.dropped.add((a, b))

    def heal(self) -> None:
        self.dropped.clear()
        self.drop_types.clear()

    # -- inspection ----------------------------------------------------------------

    def leader(self) -> int:
        leads = [n for n, p in self.peers.items() if p.node.raft.state is StateType.LEADER]
        assert len(leads) <= 1 or len({self.peers[n].node.raft.term for n in leads}) == len(
            leads
        ), "two leaders in one term"
        return max(leads, key=lambda n: self.peers[n].node.raft.term) if leads else 0

    def propose(self, nid: int, *datas: bytes) -> int:
        return self.node(nid).propose_batch(list(datas))

    def compact(self, nid: int, index: int) -> None:
        """Snapshot `nid`'s state machine at `index` and drop the log before it."""
        p = self.peers[nid]
        assert index <= p.applied_index
        items = self.applied_prefix(nid, index)
        p.storage.create_snapshot(index, p.conf_state, encode_state(items))
        p.storage.compact(index)

    def applied_prefix(self, nid: int, index: int) -> list[bytes]:
        """Payloads of NORMAL entries with index <= `index` (from the log or snapshot)."""
        p = self.peers[nid]
        snap = p.storage.snapshot()
        items = decode_state(snap.data) if snap.index else []
        lo = max(snap.index + 1, p.storage.first_index())
        if index >= lo:
            for e in p.storage.entries(lo, index + 1, 1 << 62):
                if e.type is EntryType.NORMAL and e.data:
                    items.append(e.data)
        return items

    def assert_consistent(self) -> None:
        """Safety: every pair of applied sequences agrees on their common prefix."""
        seqs = [p.applied for p in self.peers.values()]
        for a in seqs:
            for b in seqs:
                n = min(len(a), len(b))
                assert a[:n] == b[:n], "applied state machines diverged"
