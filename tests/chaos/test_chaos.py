"""Chaos tests: linearizability of a real cluster under a seeded nemesis (issue 9).

What runs (see harness.py for the faults and the report):

* `test_chaos[sync]`, `test_chaos[nosync]` -- the CI short form: a cluster of
  3 metarange replicas, 5 raftnodes and 2 gateways, clients and scanners
  through both gateways, ~60 s of random faults (kill -9 and restart,
  SIGSTOP/SIGCONT of leaseholders past the lease and election timeout with
  reads sent straight to the paused node, a write to a leaseholder cut off
  from every follower then killed, lease transfers, splits), in each FSM sync
  mode, plus replica changes and network partitions (leaseholder cut from its
  peers, minority/majority split, cut+pause; real network namespaces, see
  netns.py -- without them those faults are left out and the report says
  "partitions: unavailable (why)"). The history must be linearizable and every
  scan ordered and complete.
* `test_harness_catches_lease_without_check` and
  `test_harness_catches_ack_before_quorum` -- the same harness against a
  deliberately broken build (RANGEKV_TEST_MUTATION, see
  libs/replication/mutations.py) with a fixed schedule: the checker MUST fail.
  The lease one cuts the leaseholder's raft links before pausing it, so on
  SIGCONT it cannot hear the new leader and its reads race nothing; it is
  skipped (saying why) only where network namespaces cannot be made;
  `test_fixed_schedules_pass_without_mutation` is their control (same
  schedules, correct build, must pass).
* `test_harness_catches_a_follower_that_skips_writes` -- followers that drop
  their writes at apply, with no fault at all: only the replica checksums
  compared after the run (`Replicas.diverged`) can see it, so the run must
  report it.
* `test_harness_catches_truncation_before_sync` -- in nosync, a follower loses
  power right after its raft log was truncated past unsynced writes
  (`Nemesis.power_cut_after_truncation`) on a build that truncates before
  syncing its state engine: it cannot replay what it lost, and the replica
  checksums must report it; `test_a_power_cut_after_truncation_loses_nothing`
  is its control on the correct build.
* `test_harness_catches_a_lane_stuck_after_a_refusal` -- the refuse_raft fault
  against a build whose raft lanes never send again after a refused stream: the
  history stays linearizable, so the run's catch-up check must report the
  replicas left behind.
* `test_netns.py` -- the network lab on its own: a cut link is unreachable,
  others are not, a heal restores it, nothing is left behind.

Knobs (environment):

* `RANGEKV_CHAOS_MINUTES=N` -- a long soak: each selected `test_chaos` run
  lasts N minutes instead of the short form, e.g.
      RANGEKV_CHAOS_MINUTES=30 pytest tests/chaos -k "test_chaos and nosync"
* `RANGEKV_CHAOS_SEED=S` -- the nemesis seed (default: fixed per sync mode);
  a failing run's report names its seed, so this replays its schedule.
* `RANGEKV_CHAOS_REPORT_DIR=DIR` -- where reports go (default: the test's
  tmp dir); each run writes DIR/<test>/report.json, summary.txt, history.json
  and, on trouble, log_tails.txt.
* `RANGEKV_CHAOS_NO_NETNS=1` -- run without network namespaces (no partitions).
"""

from __future__ import annotations

import functools
import os
import re
from pathlib import Path

import pytest
from harness import ChaosConfig, ChaosResult, Nemesis, run_chaos

from rangekv.check import Operation, OpKind, Outcome

MINUTES = float(os.environ.get("RANGEKV_CHAOS_MINUTES", "0") or 0)
SHORT_SECONDS = 60.0
DURATION = MINUTES * 60 if MINUTES > 0 else SHORT_SECONDS
SEEDS = {"sync": 1, "nosync": 2}


def report_dir(tmp_path: Path, request: pytest.FixtureRequest) -> Path:
    base = os.environ.get("RANGEKV_CHAOS_REPORT_DIR")
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", request.node.name)
    return Path(base) / name if base else tmp_path / "report"


@pytest.mark.timeout(int(DURATION) + 420)
@pytest.mark.parametrize("sync_mode", ["sync", "nosync"])
def test_chaos(sync_mode: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    seed = int(os.environ.get("RANGEKV_CHAOS_SEED", SEEDS[sync_mode]))
    cfg = ChaosConfig(
        seed=seed,
        duration=DURATION,
        sync_mode=sync_mode,
        report_dir=report_dir(tmp_path, request),
    )
    result = run_chaos(cfg)
    summary = (result.report_dir / "summary.txt").read_text()
    print(summary)
    assert result.ok is True, summary
    assert not result.problems, summary
    report = result.report
    assert report["by_outcome"].get("OK", 0) >= 200 * DURATION / 60, summary
    assert report["scans"]["complete_ok"] >= 5, summary
    assert len(report["faults"]) >= 5 * DURATION / 60, summary


# ----------------------------------------------------------------------------- mutations


def stale_reads(source: Nemesis | list[Operation]) -> int:
    """Reads of the probe key returning a value that was certainly overwritten before
    the read was sent: its write completed before another acknowledged write began,
    which completed before the read was invoked (probe values are unique)."""
    ops = source.rec.operations() if isinstance(source, Nemesis) else source
    acked = [
        o for o in ops if o.key == b"probe" and o.kind is OpKind.PUT and o.outcome is Outcome.OK
    ]
    by_value = {o.value: o for o in acked}
    n = 0
    for o in ops:
        if o.key != b"probe" or o.kind is not OpKind.GET or o.outcome is not Outcome.OK:
            continue
        old = by_value.get(o.read)
        if old is not None and any(
            old.complete < p.invoke and p.complete < o.invoke for p in acked
        ):
            n += 1
    return n


async def pause_schedule(nemesis: Nemesis, attempts: int = 5) -> None:
    """Pause the probe key's leaseholder for 20 s (past the transport keepalive, see
    Nemesis.fault_pause) until a stale read is seen or `attempts` are spent."""
    for _ in range(attempts):
        await nemesis.fault_pause(pause_for=20.0)
        await nemesis.heal()
        if stale_reads(nemesis):
            return


async def partition_pause_schedule(nemesis: Nemesis, attempts: int = 3) -> None:
    """Cut the probe key's leaseholder from its raft peers and pause it past its lease
    (Nemesis.fault_partition_pause) until a stale read is seen or `attempts` are spent;
    one attempt is enough for a broken build, the others absorb a fault that could
    not be injected (e.g. no leaseholder found in time on a loaded machine)."""
    for _ in range(attempts):
        await nemesis.attempt(
            "partition+pause", functools.partial(nemesis.fault_partition_pause, pause_for=3.0)
        )
        await nemesis.heal()
        if stale_reads(nemesis):
            return


def require_partitions(result: ChaosResult) -> None:
    if result.report["partitions"].startswith("unavailable"):
        pytest.skip(f"partitions: {result.report['partitions']}")


async def isolate_schedule(nemesis: Nemesis) -> None:
    """Up to 3 attempts, until the cut-off leader acknowledged the write (a broken
    build) AND a recorded read after the heal did not see it. The followers are
    stopped, not cut off: an append the leader sent before it was killed can wait
    in a stopped follower's socket and be applied when it resumes, and then the
    acknowledged write survives by luck; another attempt absorbs that timing."""
    for _ in range(3):
        op = await nemesis.fault_isolate_write()
        await nemesis.heal()
        if op.outcome is not Outcome.OK:
            continue
        after = await nemesis.kv.read_until_ok(
            next(nemesis.probe_cid), nemesis.stubs[0], op.key, timeout=30.0, interval=0.5
        )
        if after.read != op.value:
            return


async def stale_snapshot_schedule(nemesis: Nemesis, until_stale: bool = True) -> None:
    """Nemesis.slow_snapshot_race on a register key's range, up to 3 attempts: until
    one ran (`until_stale=False`) or until one of its final reads did not see the
    last write (a broken build needs one such attempt). The other attempts absorb
    a race that could not be set up (a leaseholder not found in time on a loaded
    machine) or whose timing did not line up."""
    for _ in range(3):
        # A key in a register range that only this schedule writes, so that the
        # last value written before the stale stream lands is the one to read.
        race = functools.partial(nemesis.slow_snapshot_race, b"reg/2+race")
        if await nemesis.attempt("slow-snapshot-race", race) and (
            not until_stale or nemesis.race_stale_reads
        ):
            return
        await nemesis.heal()


async def overload_schedule(nemesis: Nemesis) -> None:
    """Nemesis.fault_overload until a leaseholder refused a batch for a full write
    queue and the scan after it succeeded, so the checker can judge the refused
    writes (one burst is normally enough; the others absorb a burst whose batches
    all fitted, or whose scan failed)."""
    for _ in range(3):
        await nemesis.attempt("overload", nemesis.fault_overload)
        if nemesis.overloads_judged:
            return


def mutation_config(seed: int, mutation: str, base: Path) -> ChaosConfig:
    return ChaosConfig(
        seed=seed, duration=0, report_dir=base, mutation=mutation, n_clients=3, n_scanners=1
    )


@pytest.mark.timeout(300)
def test_fixed_schedules_pass_without_mutation(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """The control: the mutation tests' schedules against the correct build pass, so
    their failures below are the mutations' doing, not the schedules'."""

    async def all_four(nemesis: Nemesis) -> None:
        await pause_schedule(nemesis, attempts=1)
        if nemesis.c.lab is not None:
            await partition_pause_schedule(nemesis, attempts=1)
        await isolate_schedule(nemesis)
        await stale_snapshot_schedule(nemesis, until_stale=False)
        await nemesis.fault_clock(beyond=True)
        await nemesis.fault_refuse_raft()
        await overload_schedule(nemesis)
        if nemesis.c.lab is not None:
            # A range whose lease is not back after a lost transfer is a problem of
            # the run (asserted below: `not result.problems`).
            await nemesis.fault_lost_transfer()
            await nemesis.heal()

    result = run_chaos(mutation_config(9, "", report_dir(tmp_path, request)), all_four)
    summary = (result.report_dir / "summary.txt").read_text()
    print(summary)
    assert result.ok is True, summary
    assert not result.problems, summary
    assert stale_reads(result.ops) == 0, summary
    kinds = [f["kind"] for f in result.report["faults"]]
    assert "pause" in kinds and "isolate+kill -9" in kinds, summary
    # The clock fault's refusals were counted, and there were some (a run whose
    # harness cannot read them would report no refusal as a problem above).
    assert result.report["clock_beyond_faults"] == 1, summary
    assert result.report["clock_refusals"] > 0, summary
    # The refusing node's peers counted refused raft streams, and every replica
    # caught up once it accepted again (a problem of the run otherwise).
    assert result.report["refuse_raft_faults"] == 1, summary
    assert result.report["raft_refusals"] > 0, summary
    # The overload burst filled a write queue: some batch was refused, cleanly.
    assert result.report["overload_refusals"] > 0, summary
    assert result.report["race_stale_reads"] == 0, summary
    assert any(
        f["kind"] == "slow-snapshot-race" and not f["detail"].startswith("skipped")
        for f in result.report["faults"]
    ), summary
    require_partitions(result)
    done = [
        f
        for f in result.report["faults"]
        if f["kind"] == "partition+pause" and "direct reads served" in f["detail"]
    ]
    assert done, summary  # the cut+pause really ran (and the correct build refused)
    lost = [f for f in result.report["faults"] if f["kind"] == "lost-transfer"]
    assert lost and "a lease again in term" in lost[0]["detail"], summary


@pytest.mark.timeout(300)
def test_harness_catches_lease_without_check(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """A leader that serves reads without checking its lease: cut from its raft peers
    and paused past its lease while a new leader takes a write, it cannot hear the
    new term, so on SIGCONT it answers reads with the overwritten value. The checker
    must call that history out. Needs network namespaces (skipped, saying why,
    without them: the pause alone races the new leader's messages)."""

    cfg = mutation_config(7, "lease_without_check", report_dir(tmp_path, request))
    result = run_chaos(cfg, partition_pause_schedule)
    summary = (result.report_dir / "summary.txt").read_text()
    print(summary)
    require_partitions(result)
    assert result.ok is False, f"the harness missed stale lease reads:\n{summary}"
    assert result.report["checker"]["failed_key"] == "probe", summary
    assert stale_reads(result.ops) > 0, summary


@pytest.mark.timeout(300)
def test_harness_catches_ack_before_quorum(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """A leader that acknowledges writes before a quorum holds them: cut off from
    every follower, it acks a write and is killed; the followers elect a leader
    without it, and the acknowledged write is gone. The checker must fail."""

    cfg = mutation_config(8, "ack_before_quorum", report_dir(tmp_path, request))
    result = run_chaos(cfg, isolate_schedule)
    summary = (result.report_dir / "summary.txt").read_text()
    print(summary)
    assert result.ok is False, f"the harness missed a lost acknowledged write:\n{summary}"


@pytest.mark.timeout(300)
def test_harness_catches_stale_snapshot_ingest(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """A replica that ingests every snapshot, even one older than what it applied:
    a slow stale snapshot from a former leaseholder lands after the follower was
    caught up by the new one, and the follower, once leaseholder, answers reads
    with overwritten values. The checker must fail."""
    cfg = mutation_config(10, "stale_snapshot_ingest", report_dir(tmp_path, request))
    result = run_chaos(cfg, stale_snapshot_schedule)
    summary = (result.report_dir / "summary.txt").read_text()
    print(summary)
    assert result.ok is False, f"the harness missed a stale snapshot:\n{summary}"


@pytest.mark.timeout(300)
def test_harness_catches_refused_write_that_applies(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """A leaseholder that answers RESOURCE_EXHAUSTED ("nothing was written") for a
    batch over its write queue, yet proposes it: the overload burst's scan then
    sees values of writes the clients recorded as failed. The checker must fail."""
    cfg = mutation_config(11, "refused_write_applies", report_dir(tmp_path, request))
    result = run_chaos(cfg, overload_schedule)
    summary = (result.report_dir / "summary.txt").read_text()
    print(summary)
    assert result.report["overload_refusals"] > 0, summary
    assert result.ok is False, f"the harness missed a refused write that applied:\n{summary}"


@pytest.mark.timeout(300)
def test_harness_catches_a_lane_stuck_after_a_refusal(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """stuck_lane_after_refusal: a raft lane whose stream a peer refused never sends
    again (what a gRPC reader stuck in a refused call once did to a lane). One
    refuse_raft fault: the refusing node's peers stop sending to it for good, its
    replicas never catch up -- and the history stays linearizable, since the others
    keep a quorum. Only the catch-up check sees it, so the run must report it."""

    async def refuse(nemesis: Nemesis) -> None:
        await nemesis.fault_refuse_raft()

    cfg = mutation_config(11, "stuck_lane_after_refusal", report_dir(tmp_path, request))
    cfg.catch_up_budget = 10.0
    result = run_chaos(cfg, refuse)
    summary = (result.report_dir / "summary.txt").read_text()
    print(summary)
    assert result.ok is True, summary  # linearizable: the history cannot see it
    assert result.report["raft_refusals"] > 0, summary
    behind = [p for p in result.problems if "did not catch up" in p]
    assert behind, summary


@pytest.mark.timeout(300)
def test_harness_catches_a_follower_that_skips_writes(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """follower_skips_writes: a replica that is not its range's leader when it applies
    a command drops the command's writes, so it holds less than its leader at the
    same applied index. No fault is injected: reads go to leaseholders, and the
    history can show the hole only if a lease moves to such a follower. The
    replica checksums compared after the run must report the divergence."""

    async def writes(nemesis: Nemesis) -> None:
        for _ in range(20):
            await nemesis.write_key(b"probe")

    cfg = mutation_config(12, "follower_skips_writes", report_dir(tmp_path, request))
    result = run_chaos(cfg, writes)
    summary = (result.report_dir / "summary.txt").read_text()
    print(summary)
    diverged = [p for p in result.problems if "replicas of a range diverged" in p]
    assert diverged, f"the harness missed replicas that diverged:\n{summary}"


async def power_cut_schedule(nemesis: Nemesis) -> None:
    """Nemesis.power_cut_after_truncation, up to 3 attempts until one ran with the
    follower replaying its log (the others absorb a leaseholder not found in time,
    or a snapshot sent to the restarted follower, on a loaded machine)."""
    for _ in range(3):
        ran = await nemesis.attempt(
            "power-cut-after-truncation", nemesis.power_cut_after_truncation
        )
        cuts = [f for f in nemesis.faults if f.kind == "power-cut-after-truncation"]
        if ran and "replayed its log" in cuts[-1].detail:
            return


def power_cut_config(seed: int, mutation: str, base: Path) -> ChaosConfig:
    """FSM sync mode nosync with power-loss emulation: a kill -9 loses unsynced writes."""
    cfg = mutation_config(seed, mutation, base)
    cfg.sync_mode = "nosync"
    return cfg


def power_cut_ran(result: ChaosResult) -> bool:
    """Whether a power cut ran and the follower came back by replaying its log (a
    snapshot would have replaced its state, so the fault tested nothing)."""
    return any(
        f["kind"] == "power-cut-after-truncation" and "replayed its log" in f["detail"]
        for f in result.report["faults"]
    )


@pytest.mark.timeout(300)
def test_a_power_cut_after_truncation_loses_nothing(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """The control of the next test, on the correct build in nosync: a follower whose
    log was truncated past unsynced writes loses power, replays what it lost from
    its log, and holds what its peers hold."""
    result = run_chaos(power_cut_config(13, "", report_dir(tmp_path, request)), power_cut_schedule)
    summary = (result.report_dir / "summary.txt").read_text()
    print(summary)
    assert power_cut_ran(result), summary
    assert result.ok is True, summary
    assert not result.problems, summary


@pytest.mark.timeout(300)
def test_harness_catches_truncation_before_sync(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """truncate_before_sync: in nosync, a node truncates its raft logs without syncing
    its state engine first. The follower that loses power after such a truncation
    cannot replay the writes it lost, so it holds less than its peers at the same
    applied index; reads go to the leaseholder, so the history need not show it.
    The replica checksums must."""
    cfg = power_cut_config(13, "truncate_before_sync", report_dir(tmp_path, request))
    result = run_chaos(cfg, power_cut_schedule)
    summary = (result.report_dir / "summary.txt").read_text()
    print(summary)
    assert power_cut_ran(result), summary
    diverged = [p for p in result.problems if "replicas of a range diverged" in p]
    assert diverged, f"the harness missed a replica that lost truncated writes:\n{summary}"
