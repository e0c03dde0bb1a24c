"""Test-only mutations and faults: deliberately broken builds the chaos harness must catch.

Every test-only behaviour of a process is one `TestFaults` value: read ONCE by
the service's entry point from its environment variables (RANGEKV_TEST_*,
RANGEKV_SPLIT_CRASH_AFTER), announced loudly, and handed to the components that
act on it. No production config carries a test-only field; `NO_FAULTS` is what
every real deployment runs with.

A mutation is switched on by ONE environment variable, read once at process
start (by the raftnode's entry point) and passed down as a frozen value:

    RANGEKV_TEST_MUTATION=lease_without_check | ack_before_quorum | no_scan_fence
        | stale_snapshot_ingest | quiesced_follower_campaigns | refused_write_applies
        | stuck_lane_after_refusal | follower_skips_writes | truncate_before_sync

* ``lease_without_check``: a replica that is (or still believes it is) the raft
  leader serves reads from its local state without checking its lease or
  doing a read-index, so an old leader that was paused past its lease answers
  stale reads.
* ``ack_before_quorum``: the leader applies its new entries and acknowledges
  the writes as soon as they are appended to its own log, before any quorum
  holds them; a leader that dies right after the ack loses acknowledged writes.
* ``no_scan_fence``: writes ignore scan fences (a held fence does not block them,
  a released one does not push their versions above the scan's timestamp, and
  a hold does not wait for writes already proposed), so a multi-range scan is
  no longer one snapshot.
* ``stale_snapshot_ingest``: a replica ingests every streamed snapshot, even one
  older than what it already applied, outside the scheduler's section (and
  its applied index stays ahead of the data it now holds).

* ``quiesced_follower_campaigns``: the driver wakes a quiesced follower on its
  own (without its node declaring the leader's node unreachable, so without a
  new liveness session): it ticks, times out and votes while its quiesced
  leader still counts its liveness answers as lease evidence
  (rangekv/raft/quiesce.py). The raft simulator's
  ``SimConfig.unsafe_quiesced_follower_ticks`` is the same bug in its driver;
  tests/consensus/test_simulation_quiesce.py shows the simulator catches it.

* ``refused_write_applies``: a leaseholder whose write queue is full answers
  RESOURCE_EXHAUSTED ("nothing was written") but proposes the batch anyway, so
  writes a client was told failed become visible (the chaos overload fault).

* ``stuck_lane_after_refusal``: a raft lane whose stream a peer refused
  (PERMISSION_DENIED) never sends again, as a lane did when a gRPC reader of a
  refused call never finished (the transport's READER_STOP_WAIT): that peer's
  replicas fall behind for good while the others keep a quorum (the chaos
  refuse_raft fault and its catch-up check).

* ``follower_skips_writes``: a replica that is not its range's raft leader when
  it applies a command drops the command's MVCC writes and only moves its
  applied index, so its state differs from the leader's at the same index.
  Every read goes to the leaseholder, so while the lease stays put the history
  stays linearizable: only the chaos suite's replica checksums
  (rangekv.raftnode.consistency) can see it.

* ``truncate_before_sync``: in FSM sync mode ``nosync``, a node truncates its raft
  logs without first syncing its state engine, so after a power cut the
  committed entries it would replay its lost effects from may be gone: the
  replica resumes past them and holds less than its peers at the same applied
  index (the chaos suite's replica checksums; the driver simulation's state
  digests on its nosync seeds).

Off (``none``) by default; an active one is logged loudly at startup. The
tests in ``tests/chaos/test_chaos.py`` assert that the harness catches each of
them but ``quiesced_follower_campaigns``.
"""

from __future__ import annotations

import enum
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import ClassVar, Final

from rangekv.common.clock import test_clock_offset_ns
from rangekv.common.clock import warning_line as clock_warning
from rangekv.common.logs import fault_banner

ENV_VAR = "RANGEKV_TEST_MUTATION"

SPLIT_CRASH_ENV = "RANGEKV_SPLIT_CRASH_AFTER"
#: Steps of a split after which `TestFaults.split_crash_after` exits the process.
SPLIT_CRASH_POINTS: Final = ("record", "first_intent", "both_intents", "commit", "one_resolve")


class Mutation(enum.Enum):
    NONE = "none"
    LEASE_WITHOUT_CHECK = "lease_without_check"
    ACK_BEFORE_QUORUM = "ack_before_quorum"
    NO_SCAN_FENCE = "no_scan_fence"
    STALE_SNAPSHOT_INGEST = "stale_snapshot_ingest"
    QUIESCED_FOLLOWER_CAMPAIGNS = "quiesced_follower_campaigns"
    REFUSED_WRITE_APPLIES = "refused_write_applies"
    STUCK_LANE_AFTER_REFUSAL = "stuck_lane_after_refusal"
    FOLLOWER_SKIPS_WRITES = "follower_skips_writes"
    TRUNCATE_BEFORE_SYNC = "truncate_before_sync"


def parse_mutation(environ: Mapping[str, str] | None = None) -> Mutation:
    """The mutation named by RANGEKV_TEST_MUTATION (unset or empty: NONE).

    An unknown name is an error, not a silent fallback: a test that asks for a
    mutation must get it.
    """
    env = os.environ if environ is None else environ
    raw = env.get(ENV_VAR, "").strip().lower()
    if not raw:
        return Mutation.NONE
    try:
        return Mutation(raw)
    except ValueError:
        names = "|".join(m.value for m in Mutation)
        raise ValueError(f"{ENV_VAR}={raw!r} is not one of {names}") from None


def warning_line(mutation: Mutation) -> str | None:
    """The loud startup warning for an active mutation (None when off)."""
    if mutation is Mutation.NONE:
        return None
    return fault_banner(
        "MUTATION ACTIVE",
        f"{ENV_VAR}={mutation.value}",
        "this process is DELIBERATELY BROKEN and must never serve real data",
    )


POWER_LOSS_ENV = "RANGEKV_TEST_POWER_LOSS"


def parse_power_loss(environ: Mapping[str, str] | None = None) -> bool:
    """RANGEKV_TEST_POWER_LOSS=1: kill -9 of this process loses its unsynced state
    writes, as a power cut would (see StateEngine.open). Unset or 0: off."""
    env = os.environ if environ is None else environ
    raw = env.get(POWER_LOSS_ENV, "").strip().lower()
    if raw in ("", "0", "false", "no"):
        return False
    if raw in ("1", "true", "yes"):
        return True
    raise ValueError(f"{POWER_LOSS_ENV}={raw!r} is not 0 or 1")


def power_loss_warning(power_loss: bool) -> str | None:
    if not power_loss:
        return None
    return fault_banner(
        "POWER-LOSS EMULATION ACTIVE",
        f"{POWER_LOSS_ENV}=1",
        "a kill -9 of this process LOSES unsynced writes, on purpose",
    )


SNAPSHOT_DELAY_ENV = "RANGEKV_TEST_SNAPSHOT_DELAY_MS"


def parse_snapshot_delay(environ: Mapping[str, str] | None = None) -> float:
    """RANGEKV_TEST_SNAPSHOT_DELAY_MS=N: wait N ms before sending each snapshot chunk
    (a slow stream, so a stale snapshot can arrive late). Seconds; 0 when unset."""
    env = os.environ if environ is None else environ
    raw = env.get(SNAPSHOT_DELAY_ENV, "").strip()
    if not raw:
        return 0.0
    try:
        delay = float(raw) / 1000
    except ValueError:
        raise ValueError(f"{SNAPSHOT_DELAY_ENV}={raw!r} is not a number of milliseconds") from None
    if delay < 0:
        raise ValueError(f"{SNAPSHOT_DELAY_ENV} must be >= 0")
    return delay


def snapshot_delay_warning(delay: float) -> str | None:
    if not delay:
        return None
    return fault_banner(
        "SNAPSHOT DELAY ACTIVE",
        f"{SNAPSHOT_DELAY_ENV}={delay * 1000:g}",
        "every snapshot this node sends is DELIBERATELY SLOW",
    )


REFUSE_RAFT_ENV = "RANGEKV_TEST_REFUSE_RAFT_FILE"


def refuse_raft_warning(path: str) -> str | None:
    if not path:
        return None
    return fault_banner(
        "RAFT REFUSAL ARMED",
        f"{REFUSE_RAFT_ENV}={path}",
        "while that file exists this node REFUSES every raft stream and snapshot "
        "(PERMISSION_DENIED), on purpose",
    )


@dataclass(frozen=True, slots=True)
class TestFaults:
    """Every test-only fault of one process (all off by default).

    * `mutation`: a deliberately broken behaviour (see `Mutation`);
    * `power_loss`: kill -9 loses unsynced state writes (`rocks` explains);
    * `snapshot_send_delay`: seconds waited before sending each snapshot chunk;
    * `clock_offset_ns`: the wall clock is shifted by this much (`common.clock`);
    * `split_crash_after`: exit right after this step of a split (`SPLIT_CRASH_POINTS`;
      RANGEKV_SPLIT_CRASH_AFTER);
    * `refuse_raft_file`: while this file exists, the node refuses every raft stream
      and snapshot it is sent, as its authorization would refuse a caller that is
      not a node (PERMISSION_DENIED; streams already open end at their next
      message). The chaos suite's `refuse_raft` fault: the senders' lanes must
      recover once it is gone (RANGEKV_TEST_REFUSE_RAFT_FILE).
    """

    __test__: ClassVar[bool] = False  # not a pytest test class

    mutation: Mutation = Mutation.NONE
    power_loss: bool = False
    snapshot_send_delay: float = 0.0
    clock_offset_ns: int = 0
    split_crash_after: str = ""
    refuse_raft_file: str = ""

    def __post_init__(self) -> None:
        if self.split_crash_after and self.split_crash_after not in SPLIT_CRASH_POINTS:
            raise ValueError(
                f"{SPLIT_CRASH_ENV}={self.split_crash_after!r} is not one of "
                f"{'|'.join(SPLIT_CRASH_POINTS)}"
            )
        if self.snapshot_send_delay < 0:
            raise ValueError("snapshot_send_delay must be >= 0")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> TestFaults:
        """The faults the environment asks for (RANGEKV_TEST_*, RANGEKV_SPLIT_CRASH_AFTER).
        Malformed values are errors, never ignored."""
        env = os.environ if environ is None else environ
        return cls(
            mutation=parse_mutation(env),
            power_loss=parse_power_loss(env),
            snapshot_send_delay=parse_snapshot_delay(env),
            clock_offset_ns=test_clock_offset_ns(env),
            split_crash_after=env.get(SPLIT_CRASH_ENV, "").strip(),
            refuse_raft_file=env.get(REFUSE_RAFT_ENV, "").strip(),
        )

    def refusing_raft(self) -> Callable[[], bool] | None:
        """What the raft transport server asks before serving: None when the fault
        is off (the server then asks nothing)."""
        path = self.refuse_raft_file
        if not path:
            return None
        return lambda: os.path.exists(path)

    def warnings(self) -> list[str]:
        """The loud startup lines for every active fault (empty when none is)."""
        lines = [
            warning_line(self.mutation),
            clock_warning(self.clock_offset_ns),
            power_loss_warning(self.power_loss),
            snapshot_delay_warning(self.snapshot_send_delay),
            refuse_raft_warning(self.refuse_raft_file),
        ]
        if self.split_crash_after:
            lines.append(f"split fault point armed: exit after {self.split_crash_after}")
        return [line for line in lines if line is not None]


#: What every real deployment runs with.
NO_FAULTS: Final = TestFaults()
