"""Durability mode of state-machine (FSM) commits: `sync` or `nosync`.

Why `nosync` is safe: the raft log engine fsyncs every entry before it is
acknowledged, and the state engine writes each range's applied index in the
same RocksDB batch as the effects of applying. After a crash that loses the
unsynced tail of the state engine's WAL, the applied index on disk is older
than what was applied in memory, and the driver re-applies the committed log
entries after it; apply is idempotent (MVCC writes at fixed timestamps plus
the applied index), so the replay rebuilds exactly the lost state. The state
engine becomes a cache of applied state whose durability boundary is the raft
log - provided the log is never truncated beyond what the state engine has
durably applied (see `StateEngine.sync`).

Defaults: a storage node (`rangekv raftnode`) runs `nosync`, the meta range
(`rangekv metarange`) `sync`; each says so in its own config. A raftnode in
`sync` pays a second fsync and a worker-thread round trip in every raft
iteration that applies anything, on the path of every write: on one 2-core
machine `nosync` puts ran 11-12% faster (unary at 64 clients on one range,
streamed at 64 clients over 64 ranges, one client). What makes `nosync` safe
is tested where power is cut: the seeded driver simulation cuts power on
NOSYNC seeds and compares replicas' state at equal applied indexes (it fails
when the sync before log truncation is removed), and the chaos suite's
`nosync` run turns every raftnode kill into a power cut. The meta range's
power cuts are not emulated, and its writes are few: it keeps `sync`.

Unknown or misspelt values fail safe toward durability: they mean `sync`,
with a warning. So does a blank value (`parse_fsm_sync_mode`); a component's
default applies only when the setting is not given at all.

The environment variable is read in exactly one place, `from_env`, so the
engines receive the mode as an argument and tests never touch `os.environ`.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Mapping
from typing import Final

__all__ = ["ENV_VAR", "FsmSyncMode", "from_env", "parse_fsm_sync_mode"]

ENV_VAR: Final = "RANGEKV_FSM_SYNC_MODE"

_log = logging.getLogger(__name__)


class FsmSyncMode(enum.Enum):
    """Whether a state-machine commit fsyncs the state engine's WAL."""

    SYNC = "sync"
    NOSYNC = "nosync"

    @property
    def label(self) -> str:
        """Stable label for metrics (e.g. a `fsm_apply_sync_mode{mode=...}` gauge)."""
        return self.value


def parse_fsm_sync_mode(raw: str | None) -> tuple[FsmSyncMode, str | None]:
    """Parse a sync-mode setting; returns (mode, warning or None).

    Case-insensitive, surrounding whitespace ignored. None or blank means the
    default, SYNC, silently. Anything unrecognised also yields SYNC, together
    with a warning text for the caller to log.
    """
    if raw is None:
        return FsmSyncMode.SYNC, None
    value = raw.strip().lower()
    if not value:
        return FsmSyncMode.SYNC, None
    for mode in FsmSyncMode:
        if value == mode.value:
            return mode, None
    accepted = "|".join(m.value for m in FsmSyncMode)
    return (
        FsmSyncMode.SYNC,
        f"unknown {ENV_VAR} value {raw!r} (accepted: {accepted}); "
        f"falling back to {FsmSyncMode.SYNC.value!r}",
    )


def from_env(environ: Mapping[str, str]) -> FsmSyncMode:
    """The sync mode configured in `environ` (pass `os.environ` at process start).

    This is the only place that reads `RANGEKV_FSM_SYNC_MODE`; the fallback
    warning is logged here so that it appears once per process.
    """
    mode, warning = parse_fsm_sync_mode(environ.get(ENV_VAR))
    if warning is not None:
        _log.warning("%s", warning)
    return mode
