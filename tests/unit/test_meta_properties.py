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

import itertools
import os
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
from rangekv.domain.descriptor_txn import (
    DescriptorTxn,
    ResolveIntent,
    plan_replica_change,
    plan_split,
    replicas_with,
    replicas_without,
)
from rangekv.domain.keys import meta_key
from rangekv.domain.txn import Intent, TxnMeta, TxnStatus
from rangekv.metarange.commands import (
    AllocateIds,
    AllocateIdsResult,
    Bootstrap,
    Command,
    CommandResult,
    WriteIntentResult,
    encode_command,
)
from rangekv.metarange.reads import LookupMode, iter_groups
from rangekv.metarange.records import IdKind
from rangekv.metarange.resolution import resolve_descriptor
from rangekv.metarange.state import MetaStateMachine
from rangekv.replication.state_engine import StateEngine
from rangekv.replication.sync_mode import FsmSyncMode

WHOLE = RangeDescriptor(1, b"", b"", (ReplicaDescriptor(1, 1),), 0, 2)
ALPHABET = [0x00, 0x01, 0x61, 0xFF]
KEYS = st.binary(min_size=1, max_size=2).map(
    lambda b: bytes(ALPHABET[x % len(ALPHABET)] for x in b)
)

# A tmpfs makes opening one RocksDB per example ~20x cheaper than a disk.
_TMP = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None


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
        self.dir = tempfile.mkdtemp(prefix="meta-prop-", dir=_TMP)
        self.engine = StateEngine.open(Path(self.dir) / "meta", FsmSyncMode.NOSYNC)
        self.sm = MetaStateMachine(lock_clears_span=self.LOCK_FIRST)
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

    def intents(self) -> list[Intent]:
        return [g.intent for g in iter_groups(self.engine) if g.intent is not None]

    # --- explicit actions (rules and the scenario tests both use these) ------------

    def start_split(self, original: RangeDescriptor, key: bytes) -> Coordinator | None:
        if not original.contains_key(key) or key == original.start_key:
            return None
        rid = self.run(AllocateIds(IdKind.RANGE, 1))
        assert isinstance(rid, AllocateIdsResult)
        plan = plan_split(
            original,
            key,
            rid.first,
            self.new_txn_id(),
            lock_first=self.LOCK_FIRST,
            hold_lock=self.HOLD_LOCK,
        )
        return self.begin(plan)

    def begin(self, plan: DescriptorTxn) -> Coordinator:
        self.records[plan.txn.id] = TxnRecord()
        self.coords.append(Coordinator(plan))
        return self.coords[-1]

    def advance(self, c: Coordinator, count: int = 1) -> None:
        for _ in range(count):
            if c.phase == "done":
                break
            self._step(c)

    def _step(self, c: Coordinator) -> None:
        """One protocol step; the model's truth changes only at a record commit."""
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
                self.abort(c)
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

    def abort(self, c: Coordinator) -> None:
        """The coordinator aborts its own transaction (it then resolves, lock first)."""
        rec = self.records[c.plan.txn.id]
        if rec.status is TxnStatus.PENDING:
            rec.status = TxnStatus.ABORTED
        c.phase, c.index, c.outcome = "resolve", 0, rec.status

    def crash_coordinator(self, c: Coordinator) -> None:
        c.alive = False
        self.records[c.plan.txn.id].expired = True

    def check(self) -> None:
        """Every invariant, for scenario tests that drive the machine by hand."""
        self.truth_is_a_partition()
        self.meta_invariants()
        self.every_probe_resolves_to_the_truth()

    # --- rules --------------------------------------------------------------------

    @rule(data=st.data(), key=KEYS)
    def begin_split(self, data: st.DataObject, key: bytes) -> None:
        """Split a range - usually a true one, sometimes one seen a while ago."""
        self.start_split(data.draw(st.sampled_from(self.truth + self.history[-3:])), key)

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
    @rule(data=st.data(), count=st.integers(1, 4))
    def step(self, data: st.DataObject, count: int) -> None:
        """Up to `count` protocol steps of one coordinator; with count=1 and the
        crash rule, a coordinator can stop between any two steps."""
        self.advance(self._pick(data), count)

    @precondition(_has_active)
    @rule(data=st.data())
    def give_up(self, data: st.DataObject) -> None:
        c = self._pick(data)
        if c.phase in ("sweep", "write", "commit"):
            self.abort(c)

    @precondition(_has_active)
    @rule(data=st.data())
    def crash(self, data: st.DataObject) -> None:
        self.crash_coordinator(self._pick(data))

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
        assert all(a.end_key == b.start_key for a, b in itertools.pairwise(spans))

    @invariant()
    def meta_invariants(self) -> None:
        """One slot per key, no overlapping intents, lone committed records are true."""
        groups = list(iter_groups(self.engine))
        intents = [g.intent for g in groups if g.intent is not None]
        for i in intents:
            assert i.meta_key == meta_key(i.descriptor.end_key)
        for n, a in enumerate(intents):
            for b in intents[n + 1 :]:
                if a.descriptor.overlaps(b.descriptor.start_key, b.descriptor.end_key):
                    raise Violation(f"overlapping intents {a} and {b}")
        for g in groups:
            assert g.committed is None or g.meta_key == meta_key(g.committed.end_key)
            if g.committed is not None and g.intent is None and g.committed not in self.truth:
                raise Violation(f"stale committed {g.committed} with no intent over it")

    def probes(self) -> set[bytes]:
        """Every true range's first key and one just inside it, and every intent's
        first key (where a stale intent could mislead a reader)."""
        starts = [d.start_key for d in self.truth]
        starts += [i.descriptor.start_key for i in self.intents()]
        return {k for s in starts for k in (s, s + b"\x00", s + b"\xff")}

    @invariant()
    def every_probe_resolves_to_the_truth(self) -> None:
        for key in sorted(self.probes()):
            found = self.sm.lookup(self.engine, key, 0, LookupMode.INCONSISTENT)
            desc, _ = resolve_descriptor(key, found.descriptors, found.intents, self.peek)
            if desc != self.true_cover(key):
                raise Violation(f"lookup({key!r}) resolved to {desc}, truth {self.true_cover(key)}")


def _order(d: RangeDescriptor) -> bytes:
    mk: bytes = meta_key(d.end_key)
    return mk


class NoSweepMachine(MetaMachine):
    LOCK_FIRST = False


class NoLockCheckMachine(MetaMachine):
    HOLD_LOCK = False


FAST = settings(
    max_examples=150,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    database=None,
)


def test_meta_invariants_hold_under_random_transactions() -> None:
    run_state_machine_as_test(MetaMachine, settings=FAST)


def test_property_check_catches_a_missing_lock_first_sweep() -> None:
    """The checks can fail: without the sweep, hypothesis finds overlapping intents."""
    hunt = settings(FAST, max_examples=400, phases=[Phase.generate], derandomize=True)
    with pytest.raises(Violation, match="overlapping intents"):
        run_state_machine_as_test(NoSweepMachine, settings=hunt)


# --- scenarios ----------------------------------------------------------------------

A, B, C, D = b"a", b"b", b"c", b"d"


def _machine(cls: type[MetaMachine]) -> MetaMachine:
    """A machine whose layout holds the range [a, d), all resolved."""
    m = cls()
    for at in (A, D):
        c = m.start_split(m.true_cover(at), at)
        assert c is not None
        m.advance(c, 10)
        assert c.phase == "done"
    m.check()
    return m


def _resolves_everywhere(m: MetaMachine) -> None:
    for key in (A, A + b"\x00", B, B + b"\x00", C, C + b"\x00", b"c\xff"):
        found = m.sm.lookup(m.engine, key, 0, LookupMode.INCONSISTENT)
        desc, _ = resolve_descriptor(key, found.descriptors, found.intents, m.push)
        assert desc == m.true_cover(key), key


@pytest.mark.parametrize("lock_first", [True, False], ids=["lock-first", "no-sweep"])
def test_reference_counterexample_aborted_split_leftover_then_split(lock_first: bool) -> None:
    """Reference 004: [A,D) split at B aborts leaving intents at meta(B) and meta(D);
    the meta(D) one is resolved; then [A,D) is split at C and commits.

    With the lock-first sweep the leftover is resolved before C's split takes its
    lock, and every invariant holds at every step. Without it, C's split writes
    meta(C) = [A,C) over the stale meta(B) = [A,B): overlapping intents, and a
    reader of A meets t1's stale intent first - to push t1 it must find the range
    holding t1's record, which is at A, the very key it is resolving.
    """
    m = _machine(MetaMachine if lock_first else NoSweepMachine)
    try:
        t1 = m.start_split(m.true_cover(A), B)
        assert t1 is not None
        m.advance(t1, 3)  # sweep, lock meta(D), intent meta(B)
        assert {i.meta_key for i in m.intents()} == {meta_key(B), meta_key(D)}
        m.abort(t1)
        m.advance(t1, 1)  # resolves meta(D) (the lock, first) ...
        m.crash_coordinator(t1)  # ... and dies before meta(B)
        (leftover,) = m.intents()
        assert leftover.meta_key == meta_key(B) and leftover.txn == t1.plan.txn
        m.check()

        t2 = m.start_split(m.true_cover(A), C)
        assert t2 is not None
        todo = t2.plan.sweep(m.sm.intents_in(m.engine, *t2.plan.sweep_span), m.push)
        if lock_first:  # the sweep forces the leftover out BEFORE the lock is taken
            assert todo == [ResolveIntent(meta_key(B), t1.plan.txn.id, TxnStatus.ABORTED)]
        else:
            assert todo == []
        violations: list[str] = []
        while t2.phase != "done":
            m.advance(t2, 1)
            try:
                m.check()
            except Violation as exc:
                violations.append(str(exc))
            _resolves_everywhere(m)  # an all-knowing push still finds the truth
            if t2.phase == "commit":
                first = m.sm.lookup(m.engine, A, 0, LookupMode.INCONSISTENT).intents[0]
                assert (first.txn == t1.plan.txn) is not lock_first
        assert sorted(m.truth, key=_order)[1:3] == sorted(t2.plan.updates, key=_order)
        if lock_first:
            assert violations == []
        else:
            assert violations and "overlapping intents" in violations[0]
    finally:
        m.teardown()


@pytest.mark.parametrize("hold_lock", [True, False], ids=["lock-check", "no-lock-check"])
def test_zombie_coordinator_cannot_write_behind_a_newer_transaction(hold_lock: bool) -> None:
    """t1 takes the lock, stalls, is aborted by t2's sweep; t2 splits the range;
    then t1 wakes up and writes its second intent."""
    m = _machine(MetaMachine if hold_lock else NoLockCheckMachine)
    try:
        t1 = m.start_split(m.true_cover(A), B)
        assert t1 is not None
        m.advance(t1, 2)  # sweep, lock meta(D)
        m.records[t1.plan.txn.id].expired = True  # stalls, still running
        t2 = m.start_split(m.true_cover(A), C)
        assert t2 is not None
        m.advance(t2, 4)  # sweep: push t1 (aborted), resolve its lock; lock; meta(C)
        assert m.records[t1.plan.txn.id].status is TxnStatus.ABORTED
        assert t2.phase == "commit"
        m.advance(t1, 1)  # the zombie writes meta(B)
        m.check()
        assert hold_lock, "the unsafe variant must have been caught above"
        assert t1.phase == "resolve" and m.sm.intents_in(m.engine, meta_key(B), meta_key(C)) == []
        m.advance(t2, 10)
        m.advance(t1, 10)
        m.check()
    except Violation as exc:
        assert not hold_lock, exc
    finally:
        m.teardown()


@pytest.mark.parametrize("clears", [True, False], ids=["lock-clears-span", "sweep-only"])
def test_lock_taken_over_a_leftover_written_after_the_sweep(clears: bool) -> None:
    """Found by hypothesis: t1 (a replica change of [A,D)) sweeps a clean span; then
    t2 (a split of [A,D) at B) writes its lock meta(D) and meta(B), and is aborted;
    t1's lock write meets t2's lock, pushes t2 and resolves that one intent - and,
    with only the sweep to protect it, takes meta(D) over t2's leftover meta(B):
    overlapping intents. The meta state machine refuses a lock while any other
    transaction's intent lies in the span, so t1 must resolve meta(B) first."""
    m = _machine(MetaMachine)
    m.sm = MetaStateMachine(lock_clears_span=clears)
    try:
        original = m.true_cover(A)
        t1 = m.begin(plan_replica_change(original, replicas_with(original, 2), m.new_txn_id()))
        m.advance(t1, 1)  # the sweep: nothing in the span yet
        assert t1.phase == "write"
        t2 = m.start_split(original, B)
        assert t2 is not None
        m.advance(t2, 3)  # sweep, lock meta(D), meta(B)
        assert {i.meta_key for i in m.intents()} == {meta_key(B), meta_key(D)}
        m.records[t2.plan.txn.id].status = TxnStatus.ABORTED  # pushed by someone
        m.crash_coordinator(t2)
        violations: list[str] = []
        for _ in range(6):  # t1's write phase: push and resolve what blocks it, retry
            m.advance(t1, 1)
            try:
                m.check()
            except Violation as exc:
                violations.append(str(exc))
            if t1.phase != "write":
                break
        if clears:
            assert not violations
            assert t1.phase == "commit"
            assert {i.txn.id for i in m.intents()} == {t1.plan.txn.id}
        else:
            assert any("overlapping intents" in v for v in violations)
    finally:
        m.teardown()
