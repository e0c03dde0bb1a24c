"""What drives the pure Raft core inside a process.

A `host.GroupHost` runs a process's raft groups: one `group.RaftGroup` per
group (final; composed with the group's `state_machine.StateMachine` and the
serving layer's `proposals.CommandMerger`), one `scheduler.RaftScheduler`
(group commit), a ticker, log truncation and snapshot streaming.

Every I/O seam is a Protocol with an in-memory twin beside it:

* storage: `kv.KVStore` under both engines (`log_engine`: raft logs and hard
  states, always synced, group commit; `state_engine`: the state machines,
  committed per `sync_mode`) -- `rocks.RocksKV` on disk, `memory_kv.MemoryKV`
  on a simulated disk that loses unsynced writes in a power cut; a host is
  given an `engines.EngineOpener` (`RocksEngines` | `MemoryEngines`);
* the raft transport: `raft_network.RaftSender` / `RaftEndpoint` --
  `transport.RaftTransport` and `transport_server.RaftTransportServicer` over
  gRPC, `raft_network.MemoryNetwork` in one event loop;
* time and chance: a `rangekv.common.clock.Clock` and a seeded `random.Random`.

Test-only behaviour is one `mutations.TestFaults` value, read once by a
service's entry point.
"""
