"""The storage node: hosts range replicas over the shared raft-log and state engines.

`keys` encodes user keys and MVCC versions order-preservingly, `mvcc` reads
and writes versioned data inside state-engine batches; replicas, leases,
splits and the node's gRPC services build on them.
"""
