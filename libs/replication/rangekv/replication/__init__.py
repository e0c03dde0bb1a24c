"""What drives the pure Raft core inside a process.

Storage: `log_engine` (raft logs and hard states of every group on the node
in one always-synced RocksDB, with group commit), `state_engine` (the state
machines of every range in one RocksDB, committed per `sync_mode`), and
`rocks` (rocksdict plumbing and its pitfalls). The scheduler, transport lanes
and raft codec build on them.
"""
