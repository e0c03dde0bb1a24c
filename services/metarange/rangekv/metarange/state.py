"""The meta state machine: applying meta commands to the state engine.

Pure apart from storage: no raft, no asyncio, no clock. It is the meta raft
group's `StateMachine` (rangekv.replication.state_machine): the group calls
`apply_command` for each committed entry with the scheduler's shared
`StateBatch`; every read inside apply goes through `batch.reader()`, so a
command sees the effects of earlier commands of the same batch.

Refusals are values, not exceptions, at the `apply` boundary: a refused
command is still a committed log entry that every replica applies identically
(to no effect), and the scheduler must keep applying the entries after it.
`apply` returns the `RangeKVError` and the proposer raises it. A refusal
checks everything before writing anything, so a refused command leaves the
batch untouched.

Replay: re-applying an entry after a crash must give the same state. Intent
writes by the same transaction, resolves, and bootstrap are idempotent by
definition; heartbeats keep the newest wall time; an AllocateIds replay can
only happen for entries whose effects (the counter) were NOT persisted,
because the applied index is written in the same batch, so ids are never
handed out twice.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from rangekv.common.descriptors import RangeDescriptor
from rangekv.common.errors import (
    ConditionFailed,
    FailedPrecondition,
    IntentExists,
    InvalidArgument,
    NotFound,
    RangeKVError,
)
from rangekv.domain.descriptor_txn import ResolveIntent, WriteIntent
from rangekv.domain.keys import lookup_start, meta_key, meta_span_end
from rangekv.domain.txn import Intent, TxnStatus
from rangekv.metarange import reads
from rangekv.metarange.commands import (
    AllocateIds,
    AllocateIdsResult,
    Bootstrap,
    BootstrapResult,
    Command,
    CommandResult,
    Heartbeat,
    HeartbeatResult,
    ResolveIntentResult,
    SetNodeState,
    SetNodeStateResult,
    WriteIntentResult,
    decode_command,
)
from rangekv.metarange.keys import (
    BOOTSTRAP_KEY,
    META_GROUP_ID,
    META_PREFIX,
    RecordKind,
    counter_key,
    node_key,
    record_key,
)
from rangekv.metarange.reads import LookupMode, LookupResult
from rangekv.metarange.records import (
    NODE_STATE_CHANGES,
    IdKind,
    NodeRecord,
    NodeState,
    NodeStatus,
    descriptor_to_json,
    encode_value,
    intent_to_json,
    node_to_json,
)
from rangekv.raft import ConfChange
from rangekv.replication.state_engine import (
    AppliedState,
    Reader,
    StateBatch,
    prefix_end,
    range_local_span,
)
from rangekv.replication.state_machine import Span

__all__ = ["REFUSALS", "MetaStateMachine", "decommissioned_message"]

#: The errors a command may be refused with (deterministically, on every replica).
REFUSALS = (ConditionFailed, IntentExists, InvalidArgument, FailedPrecondition, NotFound)


def decommissioned_message(node_id: int) -> str:
    """What a decommissioned node is told, wherever it tries to come back."""
    return (
        f"node {node_id} is decommissioned: its store may never rejoin the cluster; "
        "delete its data (in Kubernetes: its PersistentVolumeClaim) to start a new node"
    )


def _u64(value: int) -> bytes:
    return value.to_bytes(8, "big")


def meta_spans() -> list[Span]:
    """Every state-engine span of the meta range: its range-local keys and its records
    (what a raft snapshot of it carries, and what its checksum covers)."""
    return [range_local_span(META_GROUP_ID), (META_PREFIX, prefix_end(META_PREFIX))]


class MetaStateMachine:
    """Applies meta commands into state-engine batches; serves reads from readers.

    Holds no state of its own except counters for telemetry; any number of
    instances over one engine behave identically.
    """

    def __init__(self, *, lock_clears_span: bool = True) -> None:
        """`lock_clears_span=False` only for the tests that show what it prevents."""
        self.intents_written = 0
        self.intents_resolved = 0
        self._lock_clears_span = lock_clears_span

    # --- the raft-facing entry points (the StateMachine protocol) ---------------------

    def apply(self, command: bytes, batch: StateBatch) -> CommandResult | RangeKVError:
        """Apply one committed command; a refusal is returned, not raised (module doc)."""
        try:
            return self.execute(decode_command(command), batch)
        except REFUSALS as exc:
            return exc

    def apply_command(
        self, index: int, command: bytes, batch: StateBatch
    ) -> CommandResult | RangeKVError:
        return self.apply(command, batch)

    def apply_conf_change(self, index: int, cc: ConfChange, batch: StateBatch) -> None:
        """Meta membership lives in the raft core alone: no state to change."""

    def record_applied(self, index: int, term: int, batch: StateBatch) -> None:
        batch.set_applied_state(META_GROUP_ID, AppliedState(index, term))

    def snapshot_spans(self) -> list[Span]:
        return meta_spans()

    def snapshot_installed(self, local: Mapping[bytes, bytes]) -> None:
        """Nothing is kept in memory: every read goes to the engine."""

    def execute(self, cmd: Command, batch: StateBatch) -> CommandResult:
        """Apply a decoded command; raises the refusal (for in-process callers)."""
        if isinstance(cmd, WriteIntent):
            return self.write_intent(cmd, batch)
        if isinstance(cmd, ResolveIntent):
            return self.resolve_intent(cmd, batch)
        if isinstance(cmd, Heartbeat):
            return self.heartbeat(cmd, batch)
        if isinstance(cmd, AllocateIds):
            return self.allocate_ids(cmd, batch)
        if isinstance(cmd, SetNodeState):
            return self.set_node_state(cmd, batch)
        return self.bootstrap(cmd, batch)

    # --- commands ---------------------------------------------------------------------

    def write_intent(self, cmd: WriteIntent, batch: StateBatch) -> WriteIntentResult:
        """Write a descriptor intent, refusing rather than clobbering.

        Order of checks: another transaction's intent first (IntentExists: the
        caller must push and resolve it; the committed value is meaningless
        while someone else holds the key), then the lock (ConditionFailed at
        the lock key: our transaction lost its lock, so it was aborted), then
        the committed value (ConditionFailed with the actual value, so the
        caller can re-plan without another read), and last, for the lock
        itself (the write conditional on `expected`), no other transaction's
        intent anywhere in the span of `expected` (IntentExists naming it).

        Why the last check is here and not only in the coordinator's sweep:
        between a sweep and the lock another transaction can write its lock and
        an inner intent, be aborted, and lose only its lock to a resolver; the
        lock would then be taken over the leftover inner intent (hypothesis found
        exactly that). Checked at apply time, sweep and lock are one step.
        """
        reader = batch.reader()
        mk = cmd.meta_key
        existing = reads.get_intent(reader, mk)
        if existing is not None and existing.txn.id != cmd.txn.id:
            raise IntentExists(mk, existing.txn.to_proto())
        if cmd.lock_key is not None and cmd.lock_key != mk:
            lock = reads.get_intent(reader, cmd.lock_key)
            if lock is None or lock.txn.id != cmd.txn.id:
                raise ConditionFailed(cmd.lock_key, reads.get_committed(reader, cmd.lock_key))
        committed = reads.get_committed(reader, mk)
        if cmd.expect_absent:
            if committed is not None:
                raise ConditionFailed(mk, committed)
        elif committed != cmd.expected:
            raise ConditionFailed(mk, committed)
        if cmd.expected is not None and self._lock_clears_span:
            start = lookup_start(cmd.expected.start_key)
            end = meta_span_end(cmd.expected.end_key)
            for other in self.intents_in(reader, start, end):
                if other.txn.id != cmd.txn.id:
                    raise IntentExists(other.meta_key, other.txn.to_proto())
        intent = Intent(mk, cmd.descriptor, cmd.txn)
        if existing != intent:
            batch.put(
                record_key(mk, RecordKind.INTENT),
                encode_value(intent_to_json(cmd.descriptor, cmd.txn)),
            )
            self.intents_written += 1
        return WriteIntentResult(mk)

    def resolve_intent(self, cmd: ResolveIntent, batch: StateBatch) -> ResolveIntentResult:
        """Commit (intent becomes the committed value) or abort (intent removed).

        Only the named transaction's intent is touched: a resolver holding a
        stale view must not remove an intent a newer transaction wrote since.
        """
        reader = batch.reader()
        intent = reads.get_intent(reader, cmd.meta_key)
        if intent is None or intent.txn.id != cmd.txn_id:
            return ResolveIntentResult(False)
        if cmd.status is TxnStatus.COMMITTED:
            batch.put(
                record_key(cmd.meta_key, RecordKind.COMMITTED),
                encode_value(descriptor_to_json(intent.descriptor)),
            )
        batch.delete(record_key(cmd.meta_key, RecordKind.INTENT))
        self.intents_resolved += 1
        return ResolveIntentResult(True)

    def heartbeat(self, cmd: Heartbeat, batch: StateBatch) -> HeartbeatResult:
        """Upsert the node, keeping its state; a heartbeat older than the stored
        one is ignored, so a delayed heartbeat from before a restart cannot
        restore an old address. A decommissioned node's heartbeat is refused:
        it must not look live (or rejoin) again."""
        reader = batch.reader()
        current = reads.get_node(reader, cmd.node.node_id)
        if current is not None and current.state is NodeState.DECOMMISSIONED:
            raise FailedPrecondition(decommissioned_message(cmd.node.node_id))
        if current is not None and cmd.wall_time_ns < current.last_heartbeat:
            return HeartbeatResult(current.node, current.last_heartbeat)
        state = current.state if current is not None else NodeState.ACTIVE
        record = NodeRecord(cmd.node, cmd.wall_time_ns, state)
        batch.put(node_key(cmd.node.node_id), encode_value(node_to_json(record)))
        return HeartbeatResult(cmd.node, cmd.wall_time_ns)

    def set_node_state(self, cmd: SetNodeState, batch: StateBatch) -> SetNodeStateResult:
        """Move a node along NODE_STATE_CHANGES. DECOMMISSIONED is checked here,
        at apply time, against every record: a range that gained a replica on
        the node since the caller looked keeps it from being retired."""
        reader = batch.reader()
        current = reads.get_node(reader, cmd.node_id)
        if current is None:
            raise NotFound(f"node {cmd.node_id} is not in the store registry")
        if current.state is cmd.state:
            return SetNodeStateResult(current)
        if (current.state, cmd.state) not in NODE_STATE_CHANGES:
            raise FailedPrecondition(
                f"node {cmd.node_id} is {current.state.label}: it cannot become {cmd.state.label}"
            )
        if cmd.state is NodeState.DECOMMISSIONED:
            left = reads.ranges_on_node(reader, cmd.node_id)
            if left:
                raise FailedPrecondition(
                    f"node {cmd.node_id} still holds replicas of {len(left)} range(s), "
                    f"e.g. r{left[0]}"
                )
        record = NodeRecord(current.node, current.last_heartbeat, cmd.state)
        batch.put(node_key(cmd.node_id), encode_value(node_to_json(record)))
        return SetNodeStateResult(record)

    def allocate_ids(self, cmd: AllocateIds, batch: StateBatch) -> AllocateIdsResult:
        first = reads.next_id(batch.reader(), cmd.kind)
        batch.put(counter_key(cmd.kind), _u64(first + cmd.count))
        return AllocateIdsResult(first, cmd.count)

    def bootstrap(self, cmd: Bootstrap, batch: StateBatch) -> BootstrapResult:
        """Create the first range iff meta holds no record at all.

        Several replicas may propose Bootstrap at once; the log orders them and
        only the first applied creates anything. The id counters are moved past
        the bootstrap range's id and its nodes' ids so allocation never reuses them.
        """
        reader = batch.reader()
        if reads.is_bootstrapped(reader) or next(reads.iter_groups(reader), None) is not None:
            return BootstrapResult(False, reads.first_range(reader))
        first = cmd.first
        value = encode_value(descriptor_to_json(first))
        batch.put(record_key(meta_key(b""), RecordKind.COMMITTED), value)
        batch.put(BOOTSTRAP_KEY, value)
        self._advance_counter(batch, IdKind.RANGE, first.range_id + 1)
        top_node = max((r.node_id for r in first.replicas), default=0)
        self._advance_counter(batch, IdKind.NODE, top_node + 1)
        return BootstrapResult(True, first)

    @staticmethod
    def _advance_counter(batch: StateBatch, kind: IdKind, at_least: int) -> None:
        if reads.next_id(batch.reader(), kind) < at_least:
            batch.put(counter_key(kind), _u64(at_least))

    # --- reads (any Reader: engine, snapshot, batch view) -------------------------------

    @staticmethod
    def lookup(
        reader: Reader, key: bytes, prefetch: int, mode: LookupMode, include_intents: bool = False
    ) -> LookupResult:
        return reads.lookup(reader, key, prefetch, mode, include_intents)

    @staticmethod
    def list_ranges(
        reader: Reader, start_key: bytes, limit: int, include_intents: bool
    ) -> LookupResult:
        return reads.list_ranges(reader, start_key, limit, include_intents)

    @staticmethod
    def list_nodes(reader: Reader, now: int, ttl: int) -> list[NodeStatus]:
        return reads.list_nodes(reader, now, ttl)

    @staticmethod
    def first_range(reader: Reader) -> RangeDescriptor | None:
        return reads.first_range(reader)

    @staticmethod
    def intents_in(reader: Reader, start_mk: bytes, end_mk: bytes | None) -> Iterable[Intent]:
        """Intents at meta keys in [start_mk, end_mk) (a coordinator's lock-first sweep)."""
        return [g.intent for g in reads.iter_groups(reader, start_mk, end_mk) if g.intent]
