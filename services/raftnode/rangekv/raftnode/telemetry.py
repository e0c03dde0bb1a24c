"""The metrics of a storage node, declared once on the process's Telemetry.

Names (Prometheus, after the exporter's suffixes):
  rangekv_fsm_apply_sync_mode{mode}          1 for the configured FSM sync mode
  rangekv_lease_read_total{outcome}          hit | readindex | not_leader
  rangekv_raft_dispatch_drop_total{lane,type}, rangekv_raft_dispatch_errors_total{lane,code}
  rangekv_raft_frames_sent_total{lane}, rangekv_raft_messages_sent_total{lane}
                                             stream writes to peers, and the messages in them
  rangekv_raft_persist_seconds               group-commit write of the raft log (commit latency)
  rangekv_raft_apply_seconds                 apply of one scheduler iteration
  rangekv_raft_entries_persisted_total, rangekv_raft_entries_applied_total
  rangekv_raft_log_syncs_total               synced raft-log writes (fsyncs)
  rangekv_raft_leader_changes_total          observed leader changes, all ranges
  rangekv_node_frame_gather_turns_total      event-loop turns busy BatchFrames streams waited
                                             for more read answers before a frame
  rangekv_ranges, rangekv_ranges_led         replicas hosted / led by this node
  rangekv_event_loop_lag_seconds             from the common server scaffolding
  rangekv_node_refused_total{reason}         refused on purpose: clock_offset (a timestamp or
                                             a peer's clock beyond the max offset), overloaded
                                             (queued writes over budget), fence_lost (a scan
                                             read under a fence this leaseholder does not hold)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from rangekv.common.telemetry import Telemetry
from rangekv.raft import LeaseState
from rangekv.replication.lanes import TelemetryTransportMetrics
from rangekv.replication.sync_mode import FsmSyncMode

if TYPE_CHECKING:
    from rangekv.raftnode.store import Store


class _LeaseReads:
    def __init__(self, telemetry: Telemetry) -> None:
        self._counter = telemetry.counter(
            "rangekv_lease_read", "Consistent reads by how they were served", labels=("outcome",)
        )
        self.counts = {"hit": 0, "readindex": 0, "not_leader": 0}
        for outcome in self.counts:  # every outcome's series starts at 0
            self._counter.add(0, outcome=outcome)

    def add(self, outcome: str) -> None:
        self.counts[outcome] += 1
        self._counter.add(1, outcome=outcome)


class _Refusals:
    REASONS = ("clock_offset", "overloaded", "fence_lost")

    def __init__(self, telemetry: Telemetry) -> None:
        self._counter = telemetry.counter(
            "rangekv_node_refused", "Requests refused on purpose, by reason", labels=("reason",)
        )
        self.counts = dict.fromkeys(self.REASONS, 0)
        for reason in self.REASONS:
            self._counter.add(0, reason=reason)

    def add(self, reason: str) -> None:
        self.counts[reason] = self.counts.get(reason, 0) + 1
        self._counter.add(1, reason=reason)


class _SchedulerMetrics:
    def __init__(self, telemetry: Telemetry) -> None:
        self._persist = telemetry.histogram(
            "rangekv_raft_persist_seconds", "Synced group-commit write of the raft log"
        )
        self._apply = telemetry.histogram(
            "rangekv_raft_apply_seconds", "Applying one scheduler iteration's committed entries"
        )
        self._persisted = telemetry.counter(
            "rangekv_raft_entries_persisted", "Raft entries written to the log"
        )
        self._applied = telemetry.counter("rangekv_raft_entries_applied", "Raft entries applied")
        self._syncs = telemetry.counter("rangekv_raft_log_syncs", "Synced raft-log writes")
        self._gather_turns = telemetry.counter(
            "rangekv_raft_gather_turns",
            "Event-loop turns the raft scheduler yielded, when busy, for inputs on their way",
        )
        self._gather_turns.add(0)  # the series exists from the start (0 with gathering off)
        self.log_writes = 0
        self.entries = 0

    def observe_iteration(
        self, groups: int, entries: int, applied: int, persist_s: float, apply_s: float
    ) -> None:
        if persist_s:
            self._persist.record(persist_s)
            self._syncs.add(1)
            self.log_writes += 1
        if applied:
            self._apply.record(apply_s)
            self._applied.add(applied)
        if entries:
            self._persisted.add(entries)
            self.entries += entries

    def observe_gather(self, turns: int) -> None:
        self._gather_turns.add(turns)


class NodeMetrics:
    """Every instrument of a raftnode; create once per process."""

    def __init__(self, telemetry: Telemetry, mode: FsmSyncMode) -> None:
        self.telemetry = telemetry
        self.transport = TelemetryTransportMetrics(telemetry)
        self.scheduler = _SchedulerMetrics(telemetry)
        self.lease_reads = _LeaseReads(telemetry)
        self.refusals = _Refusals(telemetry)
        self.leader_changes = telemetry.counter(
            "rangekv_raft_leader_changes", "Leader changes observed by this node's replicas"
        )
        self.frame_gather_turns = telemetry.counter(
            "rangekv_node_frame_gather_turns",
            "Event-loop turns busy BatchFrames streams waited for more read answers "
            "before a frame (see --frame-gather-turns)",
        )
        self.frame_gather_turns.add(0)  # the series exists from the start
        telemetry.observable_gauge(
            "rangekv_fsm_apply_sync_mode",
            "1 for the FSM sync mode this node applies with",
            lambda: {(m.value,): 1.0 if m is mode else 0.0 for m in FsmSyncMode},
            labels=("mode",),
        )

    def attach(self, store: Store) -> None:
        store.ctx.reads = self.lease_reads
        store.ctx.refusals = self.refusals
        store.ctx.on_leader_change = lambda: self.leader_changes.add(1)
        self.telemetry.observable_gauge(
            "rangekv_ranges", "Range replicas hosted by this node", lambda: len(store.replicas())
        )
        self.telemetry.observable_gauge(
            "rangekv_ranges_led",
            "Ranges whose raft leader is on this node",
            lambda: sum(1 for r in store.replicas() if r.is_leader),
        )
        self.telemetry.observable_gauge(
            "rangekv_leases_valid",
            "Ranges whose lease this node holds and may serve reads under now",
            lambda: _valid_leases(store),
        )
        self.telemetry.observable_gauge(
            "rangekv_ranges_quiesced",
            "Range replicas quiesced here: not ticked, no raft heartbeats (their leases "
            "rest on node-level liveness)",
            lambda: len(store.replicas()) - store.scheduler.ticking,
        )


def _valid_leases(store: Store) -> float:
    """Read at scrape time: a lease status is a pure function of the replica's raft state."""
    now = store.clock.monotonic()
    return float(sum(1 for r in store.replicas() if r.lease_status(now).state is LeaseState.VALID))
