"""Consistency checking for rangekv: is what clients observed linearizable?

rangekv promises linearizable reads and writes.  Unit tests cannot show
that under leader changes, partitions and crashes, so the deterministic
Raft simulator and the chaos harness record every client operation into a
:class:`HistoryRecorder` and hand the resulting history to
:func:`check_history`, which searches for a legal sequential order that
respects real time.  A violation comes back with the key and an
explanation; histories can be saved with :func:`save_history` /
:func:`to_json` and replayed later with :func:`load_history` /
:func:`from_json`.

* :mod:`rangekv.check.history` -- the operation model, recorder,
  serialisation and a generator of linearizable-by-construction histories.
* :mod:`rangekv.check.linearizability` -- the checker.
* :mod:`rangekv.check.kv_client` -- operations sent to a gateway, recorded with the
  outcome a client can know (shared by the integration tests and the chaos harness).
"""

from rangekv.check.history import (
    HistoryRecorder,
    Operation,
    OpHandle,
    OpKind,
    Outcome,
    from_json,
    generate_register_history,
    load_history,
    save_history,
    to_json,
)
from rangekv.check.linearizability import CheckResult, check_history

__all__ = [
    "CheckResult",
    "HistoryRecorder",
    "OpHandle",
    "OpKind",
    "Operation",
    "Outcome",
    "check_history",
    "from_json",
    "generate_register_history",
    "load_history",
    "save_history",
    "to_json",
]
