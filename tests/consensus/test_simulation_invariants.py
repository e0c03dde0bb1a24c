"""The simulator's checks must be able to fail.

A checker that never fires is indistinguishable from a correct core, so each
invariant is fed a hand-made violating state here, and the whole pipeline is
run with deliberately broken knobs (stale reads, an over-long lease) to show
a violation surfaces as a SimulationFailure with a usable message.
"""

from __future__ import annotations

import pytest

from rangekv.raft import Entry, HardState
from rangekv.raft.simulation import (
    Cluster,
    Faults,
    InvariantChecker,
    InvariantViolation,
    SimConfig,
    SimulationFailure,
    derive_lease_duration,
    run_simulation,
)
from rangekv.raft.simulation.kv import Command, CommandKind, KVStateMachine


def _e(index: int, term: int, data: bytes = b"") -> Entry:
    return Entry(term=term, index=index, data=data)


# -- election safety ----------------------------------------------------------


def test_two_leaders_in_one_term() -> None:
    chk = InvariantChecker()
    assert chk.observe_leader(3, 1)
    assert not chk.observe_leader(3, 1)  # same leader seen again: fine
    assert chk.observe_leader(4, 2)
    with pytest.raises(InvariantViolation, match="election safety"):
        chk.observe_leader(3, 2)


def test_vote_changed_within_a_term() -> None:
    chk = InvariantChecker()
    chk.observe_hard_state(1, HardState(2, 0, 0), HardState(2, 3, 0))  # first vote in term 2
    chk.observe_hard_state(1, HardState(2, 3, 0), HardState(3, 0, 0))  # new term, no vote
    with pytest.raises(InvariantViolation, match="single vote per term"):
        chk.observe_hard_state(1, HardState(3, 2, 0), HardState(3, 1, 0))
    with pytest.raises(InvariantViolation, match="regressed"):
        chk.observe_hard_state(1, HardState(3, 2, 5), HardState(3, 2, 4))


# -- log matching / committed entries ----------------------------------------------


def test_same_index_and_term_different_payload() -> None:
    chk = InvariantChecker()
    chk.observe_entry(1, _e(5, 2, b"a"), prev_term=2)
    chk.observe_entry(2, _e(5, 2, b"a"), prev_term=2)
    with pytest.raises(InvariantViolation, match="log matching"):
        chk.observe_entry(3, _e(5, 2, b"b"), prev_term=2)


def test_same_entry_different_predecessor_term() -> None:
    chk = InvariantChecker()
    chk.observe_entry(1, _e(5, 3, b"a"), prev_term=2)
    with pytest.raises(InvariantViolation, match="log matching"):
        chk.observe_entry(2, _e(5, 3, b"a"), prev_term=1)


def test_committed_entry_overwritten() -> None:
    chk = InvariantChecker()
    chk.observe_commit(1, 7, 2)
    chk.observe_entry(2, _e(7, 2, b"x"), prev_term=2, node_commit=7)
    # A deposed leader that never learned index 7 was committed may append junk there.
    chk.observe_entry(3, _e(7, 3, b"y"), prev_term=2, node_commit=6)
    with pytest.raises(InvariantViolation, match="committed entry overwritten"):
        chk.observe_entry(4, _e(7, 3, b"y"), prev_term=2, node_commit=7)


def test_conflicting_commits() -> None:
    chk = InvariantChecker()
    chk.observe_commit(1, 4, 1)
    with pytest.raises(InvariantViolation, match="log matching"):
        chk.observe_commit(2, 4, 2)


def test_pairwise_scan_finds_divergent_prefix() -> None:
    chk = InvariantChecker()
    good = {
        1: [_e(1, 1, b"a"), _e(2, 1, b"b"), _e(3, 2, b"c")],
        2: [_e(2, 1, b"b"), _e(3, 2, b"c")],
    }
    chk.check_logs_match(good)
    # Same (index 3, term 2) but different entries before it.
    bad = {1: [_e(1, 1, b"a"), _e(2, 1, b"b"), _e(3, 2, b"c")], 2: [_e(2, 1, b"X"), _e(3, 2, b"c")]}
    with pytest.raises(InvariantViolation, match="log matching"):
        chk.check_logs_match(bad)
    # Diverging only *after* the last common term is legal (uncommitted tail).
    chk.check_logs_match({1: [_e(1, 1, b"a"), _e(2, 2, b"b")], 2: [_e(1, 1, b"a"), _e(2, 3, b"z")]})


# -- leader completeness -------------------------------------------------------------


def test_leader_missing_committed_entry() -> None:
    chk = InvariantChecker()
    for i in range(1, 6):
        chk.observe_commit(1, i, 2)
    terms = {1: 2, 2: 2, 3: 2, 4: 2}
    with pytest.raises(InvariantViolation, match="leader completeness"):
        chk.check_leader_log(2, 3, 1, 4, terms.__getitem__)  # lacks index 5
    terms = {1: 2, 2: 2, 3: 2, 4: 2, 5: 1, 6: 3}
    with pytest.raises(InvariantViolation, match="leader completeness"):
        chk.check_leader_log(2, 3, 1, 6, terms.__getitem__)  # wrong term at 5
    terms[5] = 2
    chk.check_leader_log(2, 3, 1, 6, terms.__getitem__)
    chk.check_leader_log(2, 3, 4, 6, terms.__getitem__)  # below first index: snapshot


# -- state machine safety and acknowledged writes ---------------------------------------


def test_divergent_applied_entries() -> None:
    chk = InvariantChecker()
    chk.observe_applied(1, _e(3, 1, b"put a"), state=("a",))
    chk.observe_applied(2, _e(3, 1, b"put a"), state=("a",))
    with pytest.raises(InvariantViolation, match="state machine safety"):
        chk.observe_applied(3, _e(3, 1, b"put b"), state=("b",))


def test_divergent_state_at_same_index() -> None:
    chk = InvariantChecker()
    chk.observe_applied(1, _e(3, 1, b"put a"), state=("a",))
    with pytest.raises(InvariantViolation, match="state machine safety"):
        chk.observe_snapshot_state(2, 3, ("zzz",))


def test_lost_ack_detected_when_applied_later() -> None:
    chk = InvariantChecker()
    chk.observe_ack(1, _e(9, 4, b"w1"))
    with pytest.raises(InvariantViolation, match="acknowledged write lost"):
        chk.observe_applied(2, _e(9, 5, b"w2"), state=())


def test_ack_contradicting_applied_entry() -> None:
    chk = InvariantChecker()
    chk.observe_applied(2, _e(9, 5, b"w2"), state=())
    with pytest.raises(InvariantViolation, match="acknowledged write lost"):
        chk.observe_ack(1, _e(9, 4, b"w1"))


def test_lost_ack_detected_at_convergence() -> None:
    chk = InvariantChecker()
    chk.observe_ack(1, _e(12, 2, b"w"))
    with pytest.raises(InvariantViolation, match="acknowledged write lost"):
        chk.check_converged({1: (10, ()), 2: (10, ())})


def test_convergence_mismatch() -> None:
    chk = InvariantChecker()
    with pytest.raises(InvariantViolation, match="convergence"):
        chk.check_converged({1: (10, ()), 2: (9, ())})
    with pytest.raises(InvariantViolation, match="state machine safety"):
        chk.check_converged({1: (10, ("a",)), 2: (10, ("b",))})
    chk.check_converged({1: (10, ("a",)), 2: (10, ("a",))})


# -- leases ---------------------------------------------------------------------------------


def test_two_valid_leases_at_one_instant() -> None:
    chk = InvariantChecker()
    chk.observe_leases(1.0, [])
    chk.observe_leases(2.0, [3])
    with pytest.raises(InvariantViolation, match="lease safety"):
        chk.observe_leases(2.5, [3, 1])


def test_lease_derivation_respects_overview_bound() -> None:
    for election_tick in (2, 5, 10, 50):
        for drift in (0.0, 0.01, 0.1):
            lease = derive_lease_duration(election_tick, 1.0, drift)
            assert lease > 0
            assert lease * (1 + drift) < election_tick * 1.0 * (1 - drift)
    assert SimConfig().lease_duration == derive_lease_duration(10, 1.0, 0.01, 0.9)
    with pytest.raises(ValueError):
        derive_lease_duration(1, 1.0, 0.01)


# -- the state machine -------------------------------------------------------------------------


def test_kv_commands_roundtrip_and_apply() -> None:
    cmds = [
        Command(1, CommandKind.PUT, b"k", value=b"v1"),
        Command(2, CommandKind.CAS, b"k", value=b"v2", expected=b"v1"),
        Command(3, CommandKind.CAS, b"k", value=b"v3", expected=None),
        Command(4, CommandKind.DELETE, b"k"),
        Command(5, CommandKind.DELETE, b"k"),
    ]
    kv = KVStateMachine()
    results = []
    for cmd in cmds:
        assert Command.decode(cmd.encode()) == cmd
        results.append(kv.apply(cmd).succeeded)
    assert results == [True, True, False, True, False]
    kv.apply(Command(6, CommandKind.PUT, b"a", value=b"x"))
    assert KVStateMachine.deserialize(kv.serialize()).fingerprint() == kv.fingerprint()


# -- end to end: broken knobs must be caught ----------------------------------------------------


def _first_failure(config: SimConfig, seeds: range) -> SimulationFailure:
    for seed in seeds:
        try:
            run_simulation(seed, config)
        except SimulationFailure as exc:
            return exc
    raise AssertionError(f"no seed in {seeds} caught the deliberate bug")


def test_stale_reads_are_caught_by_linearizability() -> None:
    exc = _first_failure(SimConfig(nodes=3, duration=120.0, unsafe_reads=True), range(30))
    assert exc.invariant == "linearizability"
    text = str(exc)
    assert f"simulation seed {exc.seed} failed" in text
    assert f"RANGEKV_SIM_SEED={exc.seed}" in text and "-k replay" in text
    assert "faults=['partition', 'drop'" in text
    assert "last events:" in text


def test_clock_beyond_drift_bound_is_caught_by_lease_safety() -> None:
    """A leader whose clock runs far slower than the drift bound keeps its lease
    (and its leadership: CheckQuorum also counts its slow ticks) long after
    the rest of the cluster elected a successor; the lease check must see the
    two VALID leases."""
    c = Cluster(11, SimConfig(nodes=3, faults=Faults.none()))

    def lease_held() -> bool:
        lead = c.leader()
        return lead is not None and lead.lease_valid(c.now)

    assert c.run_until(100.0, stop=lease_held)
    lead = c.leader()
    assert lead is not None
    c.set_clock_rate(lead, 0.2)
    for other in c.nodes:
        if other != lead.id:
            c.network.blocked |= {(lead.id, other), (other, lead.id)}
    with pytest.raises(InvariantViolation, match="lease safety"):
        c.run_until(c.now + 100.0)


def test_sending_before_persisting_is_caught() -> None:
    """A driver that sends a Ready's messages before persisting it, and crashes in
    between, lets a node forget votes and acks it gave: something must break."""
    cfg = SimConfig(
        nodes=3, duration=120.0, unsafe_send_before_persist=True, crash_after_persist_rate=0.05
    )
    exc = _first_failure(cfg, range(40))
    assert exc.invariant != "unexpected exception", str(exc)


def test_quiet_world_passes_without_ambiguity() -> None:
    result = run_simulation(3, SimConfig(nodes=3, duration=80.0, faults=Faults.none()))
    assert result.linearizable is True
    assert result.stats["ok"] > 10
    assert result.stats.get("crashes", 0) == 0
    assert result.stats["unknown"] == 0
