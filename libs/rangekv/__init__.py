"""rangekv: a strongly consistent, range-sharded, Raft-replicated key-value store.

The import namespace is laid over the repository's folders (see pyproject.toml):
``rangekv.raft`` is ``libs/raft``, ``rangekv.gateway`` is ``services/gateway``,
``rangekv.v1`` holds the generated wire contract, and so on.
"""

__version__ = "0.1.0"
