"""Consistency checking for rangekv: is what clients observed linearizable?

rangekv promises linearizable reads and writes.  Unit tests cannot show
that under leader changes, partitions and crashes, so the deterministic
Raft simulator and the chaos harness record every client operation into a
:class:`HistoryRecorder` and hand the resulting history to
:func:`check_history`, which searches for a legal sequential order that
respects real time.  Scans are judged as reads of every key of their span
at one instant, so keys that scans tie together are checked jointly.  A
violation comes back with the keys and an explanation; histories can be
saved with :func:`save_history` / :func:`to_json` and replayed later with
:func:`load_history` / :func:`from_json`.

* :mod:`rangekv.check.history` -- the operation model (single-key
  operations and scans), recorder and serialisation.
* :mod:`rangekv.check.generate` -- generators of linearizable-by-construction
  histories, for the checker's tests and benchmarks.
* :mod:`rangekv.check.linearizability` -- the checker.
* :mod:`rangekv.check.kv_client` -- operations sent to a gateway, recorded with the
  outcome a client can know (shared by the integration tests and the chaos harness).
"""

from rangekv.check.generate import generate_kv_history, generate_register_history
from rangekv.check.history import (
    HistoryRecorder,
    Operation,
    OpHandle,
    OpKind,
    Outcome,
    Row,
    from_json,
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
    "Row",
    "check_history",
    "from_json",
    "generate_kv_history",
    "generate_register_history",
    "load_history",
    "save_history",
    "to_json",
]
