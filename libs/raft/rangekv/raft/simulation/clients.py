"""Closed-loop clients: what they ask for, what they wait on, what they record.

Each client slot runs one operation at a time.  Writes are proposed to one
node (usually the current leader) and acknowledged when *that* node applies
the entry -- the moment a real server would answer.  Reads are either lease
reads (answered by the leader from its applied state while its lease is
VALID) or read-index reads (answered by any node once it has applied up to
the ReadState's index).

The recorded history is exactly what the clients could know: a write whose
node crashed or lost leadership before applying is UNKNOWN (and, like a
Jepsen process that timed out, the slot continues under a fresh client id so
that per-client operations stay sequential); a write the core refused with
``ProposalDropped`` is FAIL.  Reads that never returned are not recorded: a
read without a result constrains nothing.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, replace
from enum import Enum

from rangekv.check import Operation, OpKind, Outcome
from rangekv.raft.simulation.config import SimConfig
from rangekv.raft.simulation.kv import ApplyResult, Command, CommandKind


class ReadMode(Enum):
    LEASE = "lease"
    READ_INDEX = "read_index"


@dataclass(slots=True)
class PendingWrite:
    slot: int
    client: int
    command: Command
    invoke: float
    node_id: int
    incarnation: int
    term: int


@dataclass(slots=True)
class PendingRead:
    slot: int
    client: int
    key: bytes
    invoke: float
    node_id: int
    incarnation: int
    mode: ReadMode
    ctx: bytes
    index: int | None = None
    """The index the node must have applied before answering (None: not yet known)."""


@dataclass(frozen=True, slots=True)
class Intent:
    """The next operation a client slot wants to run."""

    slot: int
    client: int
    key: bytes
    command: Command | None
    """None for a read."""
    read_mode: ReadMode | None = None


_KIND = {
    CommandKind.PUT: OpKind.PUT,
    CommandKind.DELETE: OpKind.DELETE,
    CommandKind.CAS: OpKind.CAS,
}


class Clients:
    """Workload generation plus the history of completed operations."""

    def __init__(self, rng: random.Random, config: SimConfig) -> None:
        self._rng = rng
        self._cfg = config
        self.keys = [f"k{i}".encode() for i in range(config.keys)]
        self._next_client = 0
        self.client_of_slot = [self._fresh_client() for _ in range(config.clients)]
        self._next_request = 0
        self._recent: dict[bytes, list[bytes]] = {k: [] for k in self.keys}
        self.history: list[Operation] = []
        self.writes: dict[int, PendingWrite] = {}
        """request id -> pending write."""
        self.reads: dict[bytes, PendingRead] = {}
        """read context -> pending read."""
        self.busy: set[int] = set()
        self.stats = {"ok": 0, "fail": 0, "unknown": 0, "reads": 0, "abandoned": 0}

    def _fresh_client(self) -> int:
        self._next_client += 1
        return self._next_client

    # -- generation -------------------------------------------------------------

    def next_intent(self, slot: int) -> Intent:
        """Draw the next operation for ``slot`` (marks the slot busy)."""
        rng = self._rng
        self.busy.add(slot)
        key = rng.choice(self.keys)
        client = self.client_of_slot[slot]
        r = rng.random()
        if r < 0.22:
            return Intent(slot, client, key, None, ReadMode.LEASE)
        if r < 0.44:
            return Intent(slot, client, key, None, ReadMode.READ_INDEX)
        self._next_request += 1
        rid = self._next_request
        value = f"v{rid}".encode()
        recent = self._recent[key]
        if r < 0.72:
            cmd = Command(rid, CommandKind.PUT, key, value=value)
        elif r < 0.82:
            cmd = Command(rid, CommandKind.DELETE, key)
        else:
            choice = rng.random()
            expected = None
            if recent and choice < 0.6:
                expected = recent[-1]
            elif recent and choice < 0.8:
                expected = rng.choice(recent)
            new = None if rng.random() < 0.1 else value
            cmd = Command(rid, CommandKind.CAS, key, value=new, expected=expected)
        if cmd.value is not None:
            recent.append(cmd.value)
            del recent[:-4]
        return Intent(slot, client, key, cmd)

    def think_time(self) -> float:
        return self._rng.uniform(0.0, self._cfg.max_think)

    # -- writes -----------------------------------------------------------------

    def _write_op(self, w: PendingWrite | Intent, invoke: float) -> Operation:
        cmd = w.command
        assert cmd is not None
        return Operation(
            client=w.client,
            kind=_KIND[cmd.kind],
            key=cmd.key,
            invoke=invoke,
            complete=math.inf,
            outcome=Outcome.UNKNOWN,
            value=cmd.value,
            expected=cmd.expected,
        )

    def write_failed(self, intent: Intent, now: float) -> None:
        """The core refused the proposal (ProposalDropped): it had no effect."""
        op = self._write_op(intent, now)
        self.history.append(replace(op, complete=now, outcome=Outcome.FAIL))
        self.stats["fail"] += 1
        self.busy.discard(intent.slot)

    def write_acked(self, w: PendingWrite, result: ApplyResult, now: float) -> Operation:
        """The proposing node applied the entry: the client hears the result."""
        op = self._write_op(w, w.invoke)
        read = None
        if op.kind is OpKind.CAS and not result.succeeded:
            read = result.previous
        done = replace(op, complete=now, outcome=Outcome.OK, succeeded=result.succeeded, read=read)
        self.history.append(done)
        self.stats["ok"] += 1
        del self.writes[w.command.request_id]
        self.busy.discard(w.slot)
        return done

    def write_unknown(self, w: PendingWrite) -> None:
        """The client can no longer learn the outcome; the slot moves to a new client id."""
        self.history.append(self._write_op(w, w.invoke))
        self.stats["unknown"] += 1
        del self.writes[w.command.request_id]
        self.client_of_slot[w.slot] = self._fresh_client()
        self.busy.discard(w.slot)

    # -- reads --------------------------------------------------------------------

    def read_done(self, r: PendingRead, value: bytes | None, now: float) -> None:
        self.history.append(
            Operation(
                client=r.client,
                kind=OpKind.GET,
                key=r.key,
                invoke=r.invoke,
                complete=now,
                outcome=Outcome.OK,
                read=value,
            )
        )
        self.stats["reads"] += 1
        self.reads.pop(r.ctx, None)
        self.busy.discard(r.slot)

    def read_abandoned(self, r: PendingRead | Intent) -> None:
        """The read got no answer (node down, lease not valid, timeout): no record."""
        self.stats["abandoned"] += 1
        if isinstance(r, PendingRead):
            self.reads.pop(r.ctx, None)
        self.busy.discard(r.slot)
