"""Property tests of meta intents against a model of the true range layout.

Hypothesis drives random interleavings of split and replica-change
transactions over a real StateEngine: coordinators take one protocol step at
a time (`protocol.DescriptorTxn`), give up, crash between any two steps
(their records expire), or keep running after a pusher aborted them
(zombies); readers look up random keys, push what they meet and resolve some
of what they learn. The model knows the truth: the layout changes exactly
when a transaction record commits. After every step:

* every intent sits at meta(its end key) - one slot per key, so at most one;
* intents present in meta never overlap each other;
* a committed record at a key without an intent is a true descriptor;
* for every probe key, resolve_descriptor(lookup(k)) with a push that only
  reads transaction records is exactly the true descriptor covering k;
* a transaction commits only over the descriptor that is true at that moment.

The same machine with the lock-first sweep (or the lock check) switched off
must fail - the tests below assert that hypothesis finds the violation.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from rangekv.common.descriptors import RangeDescriptor, ReplicaDescriptor
from rangekv.common.errors import ConditionFailed, IntentExists, RangeKVError
from rangekv.metarange.commands import (
    AllocateIds,
    AllocateIdsResult,
    Bootstrap,
    Command,
    CommandResult,
    ResolveIntent,
    WriteIntentResult,
    encode_command,
)
from rangekv.metarange.keys import meta_key
from rangekv.metarange.reads import LookupMode, iter_groups
from rangekv.metarange.records import IdKind, Intent, TxnMeta, TxnStatus
from rangekv.metarange.resolution import (
    DescriptorTxn,
    plan_replica_change,
    plan_split,
    replicas_with,
    replicas_without,
    resolve_descriptor,
)
from rangekv.metarange.state import MetaStateMachine
from rangekv.replication.state_engine import StateEngine
from rangekv.replication.sync_mode import FsmSyncMode

WHOLE = RangeDescriptor(1, b"", b"", (ReplicaDescriptor(1, 1),), 0, 2)
ALPHABET = [0x00, 0x01, 0x61, 0xFF]
KEYS = st.binary(min_size=1, max_size=2).map(
    lambda b: bytes(ALPHABET[x % len(ALPHABET)] for x in b)
)
PROBES = sorted({b""} | {bytes([a]) for a in ALPHABET} | {bytes([a, b]) for a in ALPHABET for b in ALPHABET}
                | {b"\x61\x61\x61", b"\xff\xff\xff", b"\x00\x00\x00"})  # fmt: skip


class Violation(AssertionError):
    """An invariant of the meta range does not hold."""


@dataclass
class TxnRecord:
    status: TxnStatus = TxnStatus.PENDING
    expired: bool = False


@dataclass
class Coordinator:
    plan: DescriptorTxn
    phase: str = "sweep"  # sweep -> write -> commit -> resolve -> done
    index: int = 0
    alive: bool = True
    outcome: TxnStatus = TxnStatus.PENDING

    @property
    def active(self) -> bool:
        return self.alive and self.phase != "done"


class MetaMachine(RuleBasedStateMachine):
    LOCK_FIRST = True
    HOLD_LOCK = True

    def __init__(self) -> None:
        super().__init__()
        self.dir = tempfile.mkdtemp(prefix="meta-prop-")
        self.engine = StateEngine.open(Path(self.dir) / "meta", FsmSyncMode.NOSYNC)
        self.sm = MetaStateMachine()
        self.run(Bootstrap(WHOLE))
        self.truth: list[RangeDescriptor] = [WHOLE]
        self.history: list[RangeDescriptor] = [WHOLE]
        self.records: dict[bytes, TxnRecord] = {}
        self.coords: list[Coordinator] = []

    def teardown(self) -> None:
        self.engine.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    # --- plumbing -----------------------------------------------------------------

    def apply(self, cmd: Command) -> CommandResult | RangeKVError:
        batch = self.engine.new_batch()
        result = self.sm.apply(encode_command(cmd), batch)
        self.engine.commit(batch)
        return result

    def run(self, cmd: Command) -> CommandResult:
        result = self.apply(cmd)
        assert not isinstance(result, RangeKVError), result
        return result

    def push(self, txn: TxnMeta) -> TxnStatus:
        """A pusher: aborts the transaction if it is expired and still pending."""
        rec = self.records[txn.id]
        if rec.status is TxnStatus.PENDING and rec.expired:
            rec.status = TxnStatus.ABORTED
        return rec.status

    def peek(self, txn: TxnMeta) -> TxnStatus:
        """A push that may not abort anything (it is allowed to give up)."""
        return self.records[txn.id].status

    def true_cover(self, key: bytes) -> RangeDescriptor:
        (d,) = [d for d in self.truth if d.contains_key(key)]
        return d

    def new_txn_id(self) -> bytes:
        return (len(self.records) + 1).to_bytes(16, "big")

    def begin(self, plan: DescriptorTxn) -> None:
        self.records[plan.txn.id] = TxnRecord()
        self.coords.append(Coordinator(plan))

    def intents(self) -> list[Intent]:
        return [g.intent for g in iter_groups(self.engine) if g.intent is not None]

    # --- transactions -------------------------------------------------------------

    @rule(data=st.data(), key=KEYS)
    def begin_split(self, data: st.DataObject, key: bytes) -> None:
        """Split a range - usually a true one, sometimes one the coordinator saw long ago."""
        original = data.draw(st.sampled_from(self.truth + self.history[-3:]))
        if not original.contains_key(key) or key == original.start_key:
            return
        rid = self.run(AllocateIds(IdKind.RANGE, 1))
        assert isinstance(rid, AllocateIdsResult)
        self.begin(
            plan_split(
                original,
                key,
                rid.first,
                self.new_txn_id(),
                lock_first=self.LOCK_FIRST,
                hold_lock=self.HOLD_LOCK,
            )
        )

    @rule(data=st.data(), node=st.integers(1, 4))
    def begin_replica_change(self, data: st.DataObject, node: int) -> None:
        original = data.draw(st.sampled_from(self.truth))
        if original.replica_on(node) is None:
            replicas = replicas_with(original, node)
        elif len(original.replicas) > 1:
            replicas = replicas_without(original, node)
        else:
            return
        txn_id = self.new_txn_id()
        self.begin(plan_replica_change(original, replicas, txn_id, lock_first=self.LOCK_FIRST))

    def _pick(self, data: st.DataObject) -> Coordinator:
        return data.draw(st.sampled_from([c for c in self.coords if c.active]))

    def _has_active(self) -> bool:
        return any(c.active for c in self.coords)

    @precondition(_has_active)
    @rule(data=st.data())
    def step(self, data: st.DataObject) -> None:
        """One protocol step of one coordinator (it may crash after any of them)."""
        c = self._pick(data)
        plan, rec = c.plan, self.records[c.plan.txn.id]
        if c.phase == "sweep":
            try:
                todo = plan.sweep(self.sm.intents_in(self.engine, *plan.sweep_span), self.push)
            except IntentExists:
                return  # a live transaction holds part of the span: retry later
            if todo:
                self.run(todo[0])
            else:
                c.phase = "write"
        elif c.phase == "write":
            result = self.apply(plan.writes()[c.index])
            if isinstance(result, WriteIntentResult):
                c.index += 1
                if c.index == len(plan.writes()):
                    c.phase, c.index = "commit", 0
            elif isinstance(result, IntentExists):
                blocker = TxnMeta(result.txn.id, result.txn.record_key, result.txn.kind)
                status = self.push(blocker)
                if status.final:
                    self.run(ResolveIntent(result.key, blocker.id, status))
            else:
                assert isinstance(result, ConditionFailed), result
                self._abort(c)
        elif c.phase == "commit":
            if rec.status is TxnStatus.PENDING:
                if plan.original not in self.truth:
                    raise Violation(f"{plan.txn.kind} committed over stale {plan.original}")
                rec.status = TxnStatus.COMMITTED
                self.truth.remove(plan.original)
                self.truth.extend(plan.updates)
                self.history.extend(plan.updates)
            c.phase, c.index, c.outcome = "resolve", 0, rec.status
        elif c.phase == "resolve":
            self.run(plan.resolutions(c.outcome)[c.index])
            c.index += 1
            if c.index == len(plan.updates):
                c.phase = "done"

    def _abort(self, c: Coordinator) -> None:
        rec = self.records[c.plan.txn.id]
        if rec.status is TxnStatus.PENDING:
            rec.status = TxnStatus.ABORTED
        c.phase, c.index, c.outcome = "resolve", 0, rec.status

    @precondition(_has_active)
    @rule(data=st.data())
    def give_up(self, data: st.DataObject) -> None:
        c = self._pick(data)
        if c.phase in ("sweep", "write"):
            self._abort(c)

    @precondition(_has_active)
    @rule(data=st.data())
    def crash(self, data: st.DataObject) -> None:
        c = self._pick(data)
        c.alive = False
        self.records[c.plan.txn.id].expired = True

    @precondition(_has_active)
    @rule(data=st.data())
    def stall(self, data: st.DataObject) -> None:
        """The coordinator misses heartbeats but keeps going (a zombie if pushed)."""
        self.records[self._pick(data).plan.txn.id].expired = True

    # --- readers ------------------------------------------------------------------

    @rule(data=st.data(), key=KEYS | st.just(b""), prefetch=st.integers(0, 3))
    def read_and_resolve(self, data: st.DataObject, key: bytes, prefetch: int) -> None:
        """A gateway lookup: push what covers the key, resolve some of what it learned."""
        found = self.sm.lookup(self.engine, key, prefetch, LookupMode.INCONSISTENT)
        desc, to_resolve = resolve_descriptor(key, found.descriptors, found.intents, self.push)
        if desc != self.true_cover(key):
            raise Violation(f"lookup({key!r}) resolved to {desc}, truth {self.true_cover(key)}")
        for res in to_resolve:
            if data.draw(st.booleans(), label=f"resolve {res.meta_key!r}"):
                self.run(res.command())

    @rule()
    def settle(self) -> None:
        """Every pending transaction is aborted and every intent resolved: what is
        committed must then be exactly the true layout."""
        for rec in self.records.values():
            if rec.status is TxnStatus.PENDING:
                rec.status = TxnStatus.ABORTED
        for intent in self.intents():
            self.run(ResolveIntent(intent.meta_key, intent.txn.id, self.peek(intent.txn)))
        listed = self.sm.list_ranges(self.engine, b"", 0, True)
        if listed.intents or sorted(listed.descriptors, key=_order) != sorted(
            self.truth, key=_order
        ):
            raise Violation(f"settled meta {listed} != truth {self.truth}")

    # --- invariants ---------------------------------------------------------------

    @invariant()
    def truth_is_a_partition(self) -> None:
        spans = sorted(self.truth, key=_order)
        assert spans[0].start_key == b"" and spans[-1].end_key == b""
        assert all(a.end_key == b.start_key for a, b in zip(spans, spans[1:], strict=False))

    @invariant()
    def intents_sit_alone_at_their_keys_and_never_overlap(self) -> None:
        intents = self.intents()
        keys = [i.meta_key for i in intents]
        assert len(keys) == len(set(keys))
        for i in intents:
            assert i.meta_key == meta_key(i.descriptor.end_key)
        for n, a in enumerate(intents):
            for b in intents[n + 1 :]:
                if a.descriptor.overlaps(b.descriptor.start_key, b.descriptor.end_key):
                    raise Violation(f"overlapping intents {a} and {b}")

    @invariant()
    def committed_without_intent_is_true(self) -> None:
        for g in iter_groups(self.engine):
            if g.committed is not None and g.intent is None and g.committed not in self.truth:
                raise Violation(f"stale committed {g.committed} with no intent over it")

    @invariant()
    def every_probe_resolves_to_the_truth(self) -> None:
        for key in PROBES:
            found = self.sm.lookup(self.engine, key, 0, LookupMode.INCONSISTENT)
            desc, _ = resolve_descriptor(key, found.descriptors, found.intents, self.peek)
            if desc != self.true_cover(key):
                raise Violation(f"lookup({key!r}) resolved to {desc}, truth {self.true_cover(key)}")


def _order(d: RangeDescriptor) -> bytes:
    return meta_key(d.end_key)


class NoSweepMachine(MetaMachine):
    LOCK_FIRST = False


class NoLockCheckMachine(MetaMachine):
    HOLD_LOCK = False


FAST = settings(
    max_examples=60,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    database=None,
)


def test_meta_invariants_hold_under_random_transactions() -> None:
    run_state_machine_as_test(MetaMachine, settings=FAST)


# The checks must be able to fail: without the sweep (or without the lock check
# on the second intent) hypothesis finds overlapping intents.
HUNT = settings(FAST, max_examples=400, phases=[Phase.generate], derandomize=True)


def test_property_check_catches_a_missing_lock_first_sweep() -> None:
    with pytest.raises(Violation, match="overlapping intents"):
        run_state_machine_as_test(NoSweepMachine, settings=HUNT)


def test_property_check_catches_zombie_writes_without_the_lock_check() -> None:
    with pytest.raises(Violation, match="overlapping intents"):
        run_state_machine_as_test(NoLockCheckMachine, settings=HUNT)
