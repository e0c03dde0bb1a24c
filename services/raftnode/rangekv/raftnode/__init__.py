"""The storage node: hosts range replicas over the shared raft-log and state engines.

One job per module:

* `store` -- every replica of the node, composed with a `GroupHost` (its router
  and raft endpoint); creation at bootstrap, restart, split and on demand;
* `range_state` -- a range's state machine (MVCC writes, txn records, the
  split and replica-change triggers, GC): deterministic, no clock, no asyncio;
* `replica` -- serving the Replica API: validation (`requests`), read point,
  scan fences (`fences`), proposals (merged into one command by `writes`), answers;
  `context` -- what the replicas of a node share;
* `keys`, `mvcc`, `txn` -- stored keys, versioned data, the txn-record rules;
* `descriptor_txn` -- the descriptor transaction split and replica change run,
  `txn_push` -- pushing transactions whose records live anywhere;
* `split`, `change`, `rebalancer` -- splits (and the size queue), replica
  changes, and the policy that decides them;
* `service`, `main`, `config`, `telemetry` -- the gRPC service, the entry point
  (where flags, environment and test faults are read, once), its figures.
"""
