"""The test kit: what integration, security and chaos tests and the benchmarks share.

One of each, so that a fix or a stronger check reaches every suite at once:

* :mod:`testkit.cluster` -- the launcher of real-process clusters (metarange
  replicas, raftnodes, gateways), built on the product's own
  `rangekv.cli.cluster.LocalCluster`; any subset of the three groups can run.
* :mod:`testkit.fixtures` -- the pytest glue: the `clusters` fixture (clusters
  made by a test are always torn down, and their log tails are attached to a
  failure report).
* :mod:`testkit.replicas` -- a running cluster's raftnodes seen and steered
  through the Replica API (leaseholders, lease transfers, splits, replica
  changes); :mod:`testkit.ranges` -- meta and the nodes agreeing on a layout.
* :mod:`testkit.replica_client` -- a routed client of the Replica API for
  clusters without a gateway, and the op builders.
* :mod:`testkit.meta` -- the meta range's replicas, one at a time, and its
  records as a comparable value.
* :mod:`testkit.kv` -- the public KV API through a gateway (stubs, scans).
* :mod:`testkit.workload` -- the recorded random-client workload: operations
  through gateways recorded in a `rangekv.check.HistoryRecorder` for
  `check_history`, and scanners that check order and completeness.
* :mod:`testkit.inproc` -- real storage nodes (`Store`s) in one process over the
  libraries' twins (`MemoryNetwork`, `ManualClock`, RocksDB or `MemoryEngines`),
  with time moved only by the test; the driver simulator builds on it.
* :mod:`testkit.waiting`, :mod:`testkit.metrics` -- waits on conditions with
  deadlines, and Prometheus text read back.

The kit is importable as `testkit` because `tests/` is on `sys.path` under
pytest (tests/conftest.py's folder); scripts outside pytest (the benchmarks,
tests/chaos/harness.py) put it there themselves.
"""
