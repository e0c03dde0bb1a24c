"""The meta state machine over a real StateEngine: keys, commands, refusals, lookups."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from rangekv.common.descriptors import RangeDescriptor, ReplicaDescriptor
from rangekv.common.errors import ConditionFailed, IntentExists, InvalidArgument, RangeKVError
from rangekv.domain.descriptor_txn import (
    ResolveIntent,
    WriteIntent,
    plan_replica_change,
    plan_split,
    replicas_with,
)
from rangekv.domain.keys import decode_meta_key, lookup_start, meta_key
from rangekv.domain.txn import TxnMeta, TxnStatus
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
    WriteIntentResult,
    decode_command,
    encode_command,
)
from rangekv.metarange.keys import RecordKind, decode_record_key, record_key
from rangekv.metarange.reads import LookupMode, get_committed, get_intent
from rangekv.metarange.records import IdKind, NodeDescriptor
from rangekv.metarange.state import MetaStateMachine
from rangekv.replication.state_engine import DATA_PREFIX, LOCAL_PREFIX, TXN_PREFIX, StateEngine
from rangekv.replication.sync_mode import FsmSyncMode

REPLICAS = (ReplicaDescriptor(1, 1), ReplicaDescriptor(2, 2), ReplicaDescriptor(3, 3))
WHOLE = RangeDescriptor(1, b"", b"", REPLICAS, generation=0, next_replica_id=4)


def txn(n: int, record_key: bytes = b"") -> TxnMeta:
    return TxnMeta(n.to_bytes(16, "big"), record_key, "split")


class Meta:
    """A state machine over an engine; `run` proposes-and-applies one command."""

    def __init__(self, engine: StateEngine) -> None:
        self.engine = engine
        self.sm = MetaStateMachine()

    def apply(self, cmd: Command) -> CommandResult | RangeKVError:
        batch = self.engine.new_batch()
        result = self.sm.apply(encode_command(cmd), batch)
        self.engine.commit(batch)
        return result

    def run(self, cmd: Command) -> CommandResult:
        result = self.apply(cmd)
        if isinstance(result, RangeKVError):
            raise result
        return result


@pytest.fixture
def meta(tmp_path: Path) -> Iterator[Meta]:
    engine = StateEngine.open(tmp_path / "meta", FsmSyncMode.NOSYNC)
    m = Meta(engine)
    m.run(Bootstrap(WHOLE))
    yield m
    engine.close()


def split(meta: Meta, original: RangeDescriptor, at: bytes, n: int) -> tuple[RangeDescriptor, ...]:
    """A full, committed, resolved split; returns (right, left)."""
    rid = meta.run(AllocateIds(IdKind.RANGE, 1))
    assert isinstance(rid, AllocateIdsResult)
    plan = plan_split(original, at, rid.first, n.to_bytes(16, "big"))
    for w in plan.writes():
        meta.run(w)
    for r in plan.resolutions(TxnStatus.COMMITTED):
        meta.run(r)
    return plan.updates


# --- keys ---------------------------------------------------------------------------


ODD_KEYS = [b"", b"\x00", b"\x00\x00", b"\x00\x01", b"\x00\xff", b"a", b"a\x00", b"a\x00b",
            b"a\xff", b"ab", b"b", b"\xff", b"\xff\x00", b"\xff\xff"]  # fmt: skip


def test_meta_keys_sort_like_end_keys_with_unbounded_last() -> None:
    bounded = sorted(k for k in ODD_KEYS if k)
    encoded = [meta_key(k) for k in bounded] + [meta_key(b"")]
    assert encoded == sorted(encoded)
    assert len(set(encoded)) == len(encoded)
    for k in ODD_KEYS:
        assert decode_meta_key(meta_key(k)) == k


def test_meta_keys_are_prefix_free_so_sub_keys_stay_adjacent() -> None:
    stored = sorted(record_key(meta_key(k), kind) for k in ODD_KEYS for kind in RecordKind)
    groups = [decode_record_key(s)[0] for s in stored]
    # each meta key's two records are adjacent: the sequence of groups never revisits one
    seen: list[bytes] = []
    for g in groups:
        if not seen or seen[-1] != g:
            assert g not in seen
            seen.append(g)


def test_lookup_start_skips_the_range_ending_at_the_key() -> None:
    for k in ODD_KEYS:
        assert lookup_start(k) > meta_key(k) if k else True
        for e in ODD_KEYS:
            if e and e > k:
                assert lookup_start(k) <= meta_key(e)
            if e and e <= k:
                assert meta_key(e) < lookup_start(k)


def test_meta_keyspace_is_disjoint_from_the_state_engine_spans() -> None:
    stored = record_key(meta_key(b"a"), RecordKind.COMMITTED)
    assert not stored.startswith((LOCAL_PREFIX, TXN_PREFIX, DATA_PREFIX))


@pytest.mark.parametrize("bad", [b"", b"\x03", b"\x01a", b"\x01\x00\x01", b"\x02\x00"])
def test_malformed_meta_keys_are_invalid_arguments(bad: bytes) -> None:
    with pytest.raises(InvalidArgument):
        decode_meta_key(bad)


# --- commands: encoding -------------------------------------------------------------


def test_commands_round_trip_through_the_stable_encoding() -> None:
    left = RangeDescriptor(1, b"", b"m", REPLICAS, 1, 4)
    cmds: list[Command] = [
        WriteIntent(txn(1), left, expect_absent=True, lock_key=meta_key(b"")),
        WriteIntent(txn(2, b"\x00"), WHOLE, expected=WHOLE),
        ResolveIntent(meta_key(b"m"), txn(1).id, TxnStatus.ABORTED),
        Heartbeat(NodeDescriptor(7, "h:1", "h:2"), 123),
        AllocateIds(IdKind.NODE, 3),
        Bootstrap(WHOLE),
    ]
    for cmd in cmds:
        raw = encode_command(cmd)
        assert raw[0] == 1
        assert decode_command(raw) == cmd
        assert encode_command(decode_command(raw)) == raw


@pytest.mark.parametrize("raw", [b"", b"\x02{}", b"\x01not json", b'\x01{"op":"nope"}'])
def test_undecodable_commands_are_refused_not_crashing(meta: Meta, raw: bytes) -> None:
    batch = meta.engine.new_batch()
    assert isinstance(meta.sm.apply(raw, batch), InvalidArgument)
    assert len(batch) == 0


def test_commands_validate_on_construction() -> None:
    with pytest.raises(InvalidArgument):
        WriteIntent(txn(1), WHOLE)  # neither expected nor expect_absent
    with pytest.raises(InvalidArgument):
        WriteIntent(txn(1), WHOLE, expected=WHOLE, expect_absent=True)
    with pytest.raises(InvalidArgument):
        WriteIntent(txn(1), WHOLE, expected=RangeDescriptor(1, b"", b"x"))
    with pytest.raises(InvalidArgument):
        ResolveIntent(meta_key(b"a"), txn(1).id, TxnStatus.PENDING)
    with pytest.raises(InvalidArgument):
        AllocateIds(IdKind.RANGE, 0)
    with pytest.raises(InvalidArgument):
        Bootstrap(RangeDescriptor(1, b"a", b""))
    with pytest.raises(InvalidArgument):
        TxnMeta(b"short", b"")


# --- bootstrap ----------------------------------------------------------------------


def test_bootstrap_is_idempotent_and_first_wins(meta: Meta) -> None:
    other = RangeDescriptor(9, b"", b"", (ReplicaDescriptor(5, 1),))
    again = meta.run(Bootstrap(other))
    assert again == BootstrapResult(False, WHOLE)
    assert meta.sm.first_range(meta.engine) == WHOLE
    assert meta.sm.list_ranges(meta.engine, b"", 0, True).descriptors == (WHOLE,)


def test_bootstrap_moves_id_counters_past_its_own_ids(meta: Meta) -> None:
    assert meta.run(AllocateIds(IdKind.RANGE, 1)) == AllocateIdsResult(2, 1)
    assert meta.run(AllocateIds(IdKind.NODE, 2)) == AllocateIdsResult(4, 2)


# --- write intent -------------------------------------------------------------------


def test_write_intent_then_commit_makes_it_the_committed_value(meta: Meta) -> None:
    mk = meta_key(b"")
    new = RangeDescriptor(1, b"", b"", REPLICAS[:2], 1, 4)
    assert meta.run(WriteIntent(txn(1), new, expected=WHOLE)) == WriteIntentResult(mk)
    assert get_committed(meta.engine, mk) == WHOLE
    assert get_intent(meta.engine, mk) is not None
    assert meta.run(ResolveIntent(mk, txn(1).id, TxnStatus.COMMITTED)) == ResolveIntentResult(True)
    assert get_committed(meta.engine, mk) == new
    assert get_intent(meta.engine, mk) is None


def test_write_intent_by_the_same_txn_is_idempotent(meta: Meta) -> None:
    new = RangeDescriptor(1, b"", b"", REPLICAS[:2], 1, 4)
    cmd = WriteIntent(txn(1), new, expected=WHOLE)
    meta.run(cmd)
    before = meta.sm.intents_written
    assert meta.run(cmd) == WriteIntentResult(meta_key(b""))
    assert meta.sm.intents_written == before


def test_write_intent_refuses_another_txns_intent(meta: Meta) -> None:
    new = RangeDescriptor(1, b"", b"", REPLICAS[:2], 1, 4)
    meta.run(WriteIntent(txn(1), new, expected=WHOLE))
    result = meta.apply(WriteIntent(txn(2), new, expected=WHOLE))
    assert isinstance(result, IntentExists)
    assert result.txn.id == txn(1).id and result.key == meta_key(b"")


def test_write_intent_refuses_a_different_committed_value_and_reports_it(meta: Meta) -> None:
    stale = RangeDescriptor(1, b"", b"", REPLICAS, generation=7, next_replica_id=4)
    result = meta.apply(WriteIntent(txn(1), WHOLE, expected=stale))
    assert isinstance(result, ConditionFailed) and result.actual == WHOLE
    # full equality: same span and id but another replica set is a different value
    other = RangeDescriptor(1, b"", b"", REPLICAS[:1], 0, 4)
    assert isinstance(meta.apply(WriteIntent(txn(1), WHOLE, expected=other)), ConditionFailed)
    assert get_intent(meta.engine, meta_key(b"")) is None


def test_write_intent_expect_absent(meta: Meta) -> None:
    result = meta.apply(WriteIntent(txn(1), WHOLE, expect_absent=True))
    assert isinstance(result, ConditionFailed) and result.actual == WHOLE
    left = RangeDescriptor(1, b"", b"m", REPLICAS, 1, 4)
    meta.run(WriteIntent(txn(1), left, expect_absent=True))
    assert get_intent(meta.engine, meta_key(b"m")) is not None


def test_write_intent_requires_holding_the_lock_when_asked(meta: Meta) -> None:
    plan = plan_split(WHOLE, b"m", 2, txn(1).id)
    lock, second = plan.writes()
    assert isinstance(meta.apply(second), ConditionFailed)  # lock not taken yet
    meta.run(lock)
    meta.run(second)
    # the lock is resolved away (a pusher aborted the txn): no more intents
    meta.run(ResolveIntent(plan.lock_key, plan.txn.id, TxnStatus.ABORTED))
    meta.run(ResolveIntent(meta_key(b"m"), plan.txn.id, TxnStatus.ABORTED))
    assert isinstance(meta.apply(second), ConditionFailed)
    assert get_intent(meta.engine, meta_key(b"m")) is None


def test_refusals_write_nothing(meta: Meta) -> None:
    meta.run(WriteIntent(txn(1), WHOLE, expected=WHOLE))
    batch = meta.engine.new_batch()
    assert isinstance(
        meta.sm.apply(encode_command(WriteIntent(txn(2), WHOLE, expected=WHOLE)), batch),
        IntentExists,
    )
    assert len(batch) == 0


# --- resolve intent -----------------------------------------------------------------


def test_resolve_abort_removes_the_intent_and_keeps_committed(meta: Meta) -> None:
    meta.run(WriteIntent(txn(1), WHOLE, expected=WHOLE))
    resolved = meta.run(ResolveIntent(meta_key(b""), txn(1).id, TxnStatus.ABORTED))
    assert resolved == ResolveIntentResult(True)
    assert get_intent(meta.engine, meta_key(b"")) is None
    assert get_committed(meta.engine, meta_key(b"")) == WHOLE


def test_resolve_is_idempotent_and_only_touches_the_named_txn(meta: Meta) -> None:
    mk = meta_key(b"")
    meta.run(WriteIntent(txn(1), WHOLE, expected=WHOLE))
    assert meta.run(ResolveIntent(mk, txn(2).id, TxnStatus.ABORTED)) == ResolveIntentResult(False)
    assert get_intent(meta.engine, mk) is not None
    assert meta.run(ResolveIntent(mk, txn(1).id, TxnStatus.ABORTED)) == ResolveIntentResult(True)
    assert meta.run(ResolveIntent(mk, txn(1).id, TxnStatus.ABORTED)) == ResolveIntentResult(False)
    assert meta.run(ResolveIntent(mk, txn(1).id, TxnStatus.COMMITTED)) == ResolveIntentResult(False)
    assert get_committed(meta.engine, mk) == WHOLE


def test_commands_in_one_batch_see_each_other(meta: Meta) -> None:
    batch = meta.engine.new_batch()
    new = RangeDescriptor(1, b"", b"", REPLICAS[:2], 1, 4)
    meta.sm.execute(WriteIntent(txn(1), new, expected=WHOLE), batch)
    meta.sm.execute(ResolveIntent(meta_key(b""), txn(1).id, TxnStatus.COMMITTED), batch)
    with pytest.raises(ConditionFailed):
        meta.sm.execute(WriteIntent(txn(2), new, expected=WHOLE), batch)
    meta.engine.commit(batch)
    assert get_committed(meta.engine, meta_key(b"")) == new


# --- registry and ids ---------------------------------------------------------------


def test_heartbeat_upserts_address_and_liveness_is_judged_at_read_time(meta: Meta) -> None:
    meta.run(Heartbeat(NodeDescriptor(2, "a:1"), 1_000))
    meta.run(Heartbeat(NodeDescriptor(1, "b:1"), 5_000))
    moved = meta.run(Heartbeat(NodeDescriptor(2, "a:2", "a:9"), 2_000))
    assert moved == HeartbeatResult(NodeDescriptor(2, "a:2", "a:9"), 2_000)
    # a delayed heartbeat from before the restart changes nothing
    stale = meta.run(Heartbeat(NodeDescriptor(2, "a:1"), 1_500))
    assert stale == HeartbeatResult(NodeDescriptor(2, "a:2", "a:9"), 2_000)
    nodes = meta.sm.list_nodes(meta.engine, now=5_500, ttl=1_000)
    assert [(n.node.node_id, n.node.address, n.live) for n in nodes] == [
        (1, "b:1", True),
        (2, "a:2", False),
    ]
    assert all(n.live for n in meta.sm.list_nodes(meta.engine, now=3_000, ttl=3_000))


def test_allocate_ids_is_monotonic_per_kind_and_persisted(meta: Meta, tmp_path: Path) -> None:
    a = meta.run(AllocateIds(IdKind.RANGE, 10))
    b = meta.run(AllocateIds(IdKind.RANGE, 1))
    n = meta.run(AllocateIds(IdKind.NODE, 1))
    assert (a, b, n) == (
        AllocateIdsResult(2, 10),
        AllocateIdsResult(12, 1),
        AllocateIdsResult(4, 1),
    )
    meta.engine.close()
    meta.engine = StateEngine.open(tmp_path / "meta", FsmSyncMode.NOSYNC)
    assert meta.run(AllocateIds(IdKind.RANGE, 1)) == AllocateIdsResult(13, 1)


# --- lookups ------------------------------------------------------------------------


@pytest.fixture
def layout(meta: Meta) -> list[RangeDescriptor]:
    """Ranges [,\\x00) [\\x00,a) [a,a\\x00) [a\\x00,\\xff) [\\xff,), all committed."""
    right, _ = split(meta, WHOLE, b"\xff", 101)
    r1 = meta.sm.lookup(meta.engine, b"", 0, LookupMode.CONSISTENT).descriptors[0]
    right_a, left_a = split(meta, r1, b"a", 102)
    right_a0, left_a0 = split(meta, right_a, b"a\x00", 103)
    right_0, left_0 = split(meta, left_a, b"\x00", 104)
    return [left_0, right_0, left_a0, right_a0, right]


def test_list_ranges_is_the_layout_in_key_order(meta: Meta, layout: list[RangeDescriptor]) -> None:
    assert list(meta.sm.list_ranges(meta.engine, b"", 0, False).descriptors) == layout
    assert list(meta.sm.list_ranges(meta.engine, b"a", 2, False).descriptors) == layout[2:4]


@pytest.mark.parametrize(
    ("key", "index"),
    [(b"", 0), (b"\x00", 1), (b"\x00\xff", 1), (b"a", 2), (b"a\x00", 3), (b"a\x00\x00", 3),
     (b"b", 3), (b"\xfe\xff", 3), (b"\xff", 4), (b"\xff\xff\xff", 4)],
)  # fmt: skip
def test_lookup_finds_the_covering_range_and_prefetches(
    meta: Meta, layout: list[RangeDescriptor], key: bytes, index: int
) -> None:
    for mode in LookupMode:
        res = meta.sm.lookup(meta.engine, key, 2, mode)
        assert list(res.descriptors) == layout[index : index + 3]
        assert res.intents == ()
        assert meta.sm.lookup(meta.engine, key, 0, mode).descriptors == (layout[index],)


def test_lookup_modes_separate_intents(meta: Meta, layout: list[RangeDescriptor]) -> None:
    # a pending split of [a\x00, \xff) at b: intents at meta(\xff) (lock) and meta(b)
    plan = plan_split(layout[3], b"b", 50, txn(7, b"a\x00").id)
    for w in plan.writes():
        meta.run(w)
    consistent = meta.sm.lookup(meta.engine, b"a\x01", 1, LookupMode.CONSISTENT)
    assert consistent.descriptors == (layout[3], layout[4]) and consistent.intents == ()
    inconsistent = meta.sm.lookup(meta.engine, b"a\x01", 1, LookupMode.INCONSISTENT)
    with_intents = meta.sm.lookup(meta.engine, b"a\x01", 1, LookupMode.CONSISTENT, True)
    assert with_intents == inconsistent  # a leader's re-read sees what a scan meets
    assert inconsistent.descriptors == (layout[3], layout[4])
    left, right = plan.updates[1], plan.updates[0]
    assert [(i.meta_key, i.descriptor) for i in inconsistent.intents] == [
        (meta_key(b"b"), left),
        (meta_key(b"\xff"), right),
    ]
    assert all(i.txn == plan.txn for i in inconsistent.intents)
    listing = meta.sm.list_ranges(meta.engine, b"", 0, True)
    assert len(listing.intents) == 2 and list(listing.descriptors) == layout
    proto = inconsistent.to_lookup_proto()
    assert proto.intents[0].txn.record_key == b"a\x00"


def test_replica_change_plan_bumps_generation_and_replica_ids(meta: Meta) -> None:
    plan = plan_replica_change(WHOLE, replicas_with(WHOLE, 4), txn(3).id)
    (new,) = plan.updates
    assert (new.range_id, new.generation, new.next_replica_id) == (1, 1, 5)
    assert new.replica_on(4) == ReplicaDescriptor(4, 4)
    for w in plan.writes():
        meta.run(w)
    for r in plan.resolutions(TxnStatus.COMMITTED):
        meta.run(r)
    assert meta.sm.lookup(meta.engine, b"x", 0, LookupMode.CONSISTENT).descriptors == (new,)
