"""The lock-first protocol of descriptor transactions, as plain values.

A descriptor transaction (split, replica change) changes the range it read,
`original` = [A, C), into `updates`. Its record lives at `original.start_key`
(the left-hand side keeps the range id, so the pre- and post-split
descriptors both route a push there). The steps, each of which the
coordinator may crash after:

1. sweep: resolve every intent found at meta keys inside the span, i.e. at
   meta(X) for A < X <= C, pushing its transaction first; a still-pending
   transaction (push could not abort it) blocks the transaction - retry later;
2. lock: write the intent at meta(C), conditional on the committed value being
   `original` (so two changes of one range cannot both proceed);
3. the other intents (the left-hand side meta(B) of a split), expect_absent,
   each conditional on still holding the lock (`WriteIntent.lock_key`);
4. commit the transaction record (with the split trigger, on the range's raft
   log - not the meta range's business), then
5. resolve the intents, the lock first.

Why the sweep: an aborted split of [A, D) at B whose meta(D) intent was
resolved but whose meta(B) intent was left behind is invisible to the lock
at meta(D). Without the sweep a later split of [A, D) at C succeeds and its
meta(C) = [A, C) intent overlaps the stale meta(B) = [A, B): reading meta(B)
would then need meta(C) to route the push of meta(B)'s own transaction. With
the sweep, the leftover is gone before the lock is taken, so intents of
different transactions never overlap.

Why the lock check on step 3: a coordinator does not learn that a pusher
aborted its transaction until it tries to commit; without the check it could
still write meta(B) after a newer transaction took the range, again leaving
overlapping intents.

`WriteIntent` and `ResolveIntent` are the two meta operations of the protocol:
the meta range applies them (`rangekv.metarange.commands` encodes them into its
raft log), coordinators send them (`to_request`). Validation that does not
depend on state happens when they are built, so a proposer learns of bad input
before anything reaches a log.

`lock_first` and `hold_lock` exist so the tests can switch the rules off and
watch the invariants break; production code never sets them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace

from rangekv.common.descriptors import RangeDescriptor, ReplicaDescriptor, ReplicaType
from rangekv.common.errors import IntentExists, InvalidArgument
from rangekv.domain.keys import decode_meta_key, lookup_start, meta_key, meta_span_end
from rangekv.domain.txn import Intent, TxnMeta, TxnStatus, check_txn_id
from rangekv.v1 import meta_pb2

__all__ = [
    "DescriptorTxn",
    "ResolveIntent",
    "WriteIntent",
    "plan_replica_change",
    "plan_split",
    "replicas_with",
    "replicas_without",
]


@dataclass(frozen=True, slots=True)
class WriteIntent:
    """Write `descriptor` as `txn`'s intent at meta(descriptor.end_key).

    Conditional on the committed value there: equal to `expected`, or absent
    when `expect_absent`; exactly one of the two must be given. `lock_key`,
    when set, is the meta key of the transaction's lock (the intent it wrote
    first): the write also requires that key to still hold an intent of this
    transaction, so a coordinator whose transaction was aborted and whose lock
    was resolved away cannot add intents behind a newer transaction's back.
    """

    txn: TxnMeta
    descriptor: RangeDescriptor
    expected: RangeDescriptor | None = None
    expect_absent: bool = False
    lock_key: bytes | None = None

    def __post_init__(self) -> None:
        if (self.expected is None) != self.expect_absent:
            raise InvalidArgument(
                "expected", "give exactly one of an expected descriptor or expect_absent"
            )
        if self.expected is not None and self.expected.end_key != self.descriptor.end_key:
            raise InvalidArgument(
                "expected", "the expected descriptor must end where the new one ends"
            )
        if self.descriptor.range_id == 0:
            raise InvalidArgument("descriptor.range_id", "must be non-zero")
        if self.lock_key is not None:
            decode_meta_key(self.lock_key)

    @property
    def meta_key(self) -> bytes:
        return meta_key(self.descriptor.end_key)

    def to_request(self) -> meta_pb2.WriteIntentRequest:
        req = meta_pb2.WriteIntentRequest(
            txn=self.txn.to_proto(),
            descriptor=self.descriptor.to_proto(),
            expect_absent=self.expect_absent,
            lock_key=self.lock_key or b"",
        )
        if self.expected is not None:
            req.expected.CopyFrom(self.expected.to_proto())
        return req

    @staticmethod
    def from_request(req: meta_pb2.WriteIntentRequest) -> WriteIntent:
        if not req.HasField("descriptor"):
            raise InvalidArgument("descriptor", "required")
        expected = RangeDescriptor.from_proto(req.expected) if req.HasField("expected") else None
        return WriteIntent(
            txn=TxnMeta.from_proto(req.txn),
            descriptor=RangeDescriptor.from_proto(req.descriptor),
            expected=expected,
            expect_absent=req.expect_absent,
            lock_key=req.lock_key or None,
        )


@dataclass(frozen=True, slots=True)
class ResolveIntent:
    """Commit or abort `txn_id`'s intent at `meta_key`; a no-op if it is not there."""

    meta_key: bytes
    txn_id: bytes
    status: TxnStatus

    def __post_init__(self) -> None:
        decode_meta_key(self.meta_key)
        check_txn_id("txn_id", self.txn_id)
        if self.status not in (TxnStatus.COMMITTED, TxnStatus.ABORTED):
            raise InvalidArgument("status", "must be COMMITTED or ABORTED")


@dataclass(frozen=True, slots=True)
class DescriptorTxn:
    """One descriptor transaction: what it read, what it writes, in which order.

    ``updates[0]`` ends where ``original`` ends: it is the lock. The other
    updates end strictly inside the span, at keys holding no committed value.
    """

    txn: TxnMeta
    original: RangeDescriptor
    updates: tuple[RangeDescriptor, ...]
    lock_first: bool = True
    hold_lock: bool = True

    def __post_init__(self) -> None:
        if not self.updates or self.updates[0].end_key != self.original.end_key:
            raise InvalidArgument("updates", "the first update must end where the range ends")
        ends = [u.end_key for u in self.updates]
        if len(set(ends)) != len(ends):
            raise InvalidArgument("updates", "two updates end at the same key")
        for u in self.updates:
            bounded_inside = bool(u.end_key) and u.end_key <= self.original.end_key
            inside = u.start_key >= self.original.start_key and (
                not self.original.end_key or bounded_inside
            )
            if not inside:
                raise InvalidArgument("updates", f"{u} leaves the span of {self.original}")

    @property
    def lock_key(self) -> bytes:
        return meta_key(self.original.end_key)

    @property
    def sweep_span(self) -> tuple[bytes, bytes]:
        """[start, end) in logical meta keys of the records inside the span:
        meta(X) for start_key < X <= end_key."""
        return lookup_start(self.original.start_key), meta_span_end(self.original.end_key)

    def in_span(self, mk: bytes) -> bool:
        lo, hi = self.sweep_span
        return lo <= mk < hi

    def sweep(
        self, intents: Iterable[Intent], push: Callable[[TxnMeta], TxnStatus]
    ) -> list[ResolveIntent]:
        """Step 1: the resolves that clear the span of other transactions' intents.

        `intents` is what the coordinator found over `sweep_span`; intents outside
        the span and this transaction's own (a restarted coordinator meets them)
        are ignored. Raises IntentExists for an intent whose transaction is still
        pending: nothing may be written over a live transaction's intents.
        """
        out: list[ResolveIntent] = []
        for intent in intents:
            if intent.txn.id == self.txn.id or not self.in_span(intent.meta_key):
                continue
            if not self.lock_first and intent.meta_key != self.lock_key:
                continue  # the unsafe variant only clears what blocks the lock itself
            status = push(intent.txn)
            if status is TxnStatus.PENDING:
                raise IntentExists(intent.meta_key, intent.txn.to_proto())
            out.append(ResolveIntent(intent.meta_key, intent.txn.id, status))
        return out

    def writes(self) -> list[WriteIntent]:
        """Steps 2 and 3, in order: the lock, then the other intents."""
        lock = WriteIntent(self.txn, self.updates[0], expected=self.original)
        rest = [
            WriteIntent(
                self.txn,
                u,
                expect_absent=True,
                lock_key=self.lock_key if self.hold_lock else None,
            )
            for u in self.updates[1:]
        ]
        return [lock, *rest]

    def resolutions(self, status: TxnStatus) -> list[ResolveIntent]:
        """Step 5: resolve every intent of the transaction, the lock first."""
        return [ResolveIntent(meta_key(u.end_key), self.txn.id, status) for u in self.updates]


def plan_split(
    original: RangeDescriptor,
    split_key: bytes,
    right_range_id: int,
    txn_id: bytes,
    *,
    lock_first: bool = True,
    hold_lock: bool = True,
) -> DescriptorTxn:
    """Split `original` = [A, C) at B: [A, B) keeps the range id, [B, C) gets
    `right_range_id`; both sides take generation + 1 and the same replicas."""
    if not original.contains_key(split_key) or split_key == original.start_key:
        raise InvalidArgument("split_key", f"{split_key!r} is not strictly inside {original}")
    if right_range_id in (0, original.range_id):
        raise InvalidArgument("right_range_id", "must be a new, non-zero range id")
    generation = original.generation + 1
    left = replace(original, end_key=split_key, generation=generation)
    right = RangeDescriptor(
        range_id=right_range_id,
        start_key=split_key,
        end_key=original.end_key,
        replicas=original.replicas,
        generation=generation,
        next_replica_id=original.next_replica_id,
    )
    txn = TxnMeta(txn_id, original.start_key, "split")
    return DescriptorTxn(txn, original, (right, left), lock_first=lock_first, hold_lock=hold_lock)


def plan_replica_change(
    original: RangeDescriptor,
    replicas: tuple[ReplicaDescriptor, ...],
    txn_id: bytes,
    *,
    lock_first: bool = True,
) -> DescriptorTxn:
    """Replace the replica set: one intent at meta(end), same range id,
    generation + 1; next_replica_id stays above every replica id ever used."""
    top = max((r.replica_id for r in replicas), default=0)
    updated = replace(
        original,
        replicas=replicas,
        generation=original.generation + 1,
        next_replica_id=max(original.next_replica_id, top + 1),
    )
    txn = TxnMeta(txn_id, original.start_key, "change-replicas")
    return DescriptorTxn(txn, original, (updated,), lock_first=lock_first)


def replicas_with(
    original: RangeDescriptor, node_id: int, kind: ReplicaType = ReplicaType.VOTER
) -> tuple[ReplicaDescriptor, ...]:
    """`original`'s replicas plus one on `node_id` with the next replica id."""
    if original.replica_on(node_id) is not None:
        raise InvalidArgument("node_id", f"range {original.range_id} already has node {node_id}")
    return (*original.replicas, ReplicaDescriptor(node_id, original.next_replica_id, kind))


def replicas_without(original: RangeDescriptor, node_id: int) -> tuple[ReplicaDescriptor, ...]:
    if original.replica_on(node_id) is None:
        raise InvalidArgument("node_id", f"range {original.range_id} has no replica on {node_id}")
    return tuple(r for r in original.replicas if r.node_id != node_id)
