"""The chaos suite's credentials: one place, so the harness runs mutual TLS on every link.

Every cluster the suite starts uses the certificates of :func:`certs_dir` (a CA,
one node certificate, an admin client; made once per test process), and every
channel the harness opens comes from :func:`channel`, as a node of the cluster:
the nemesis and checker call internal APIs (RangeInfo, TransferLease, Meta) as
well as the gateways' KV API. Servers are checked by the node name in their
certificate, so namespaced addresses need no certificate of their own.
"""

from __future__ import annotations

import atexit
import datetime
import functools
import shutil
import tempfile
from pathlib import Path

import grpc

from rangekv.common.certs import ensure_dev_certs
from rangekv.common.config import SecurityConfig
from rangekv.common.tls import ChannelOpener, node_channels


@functools.cache
def certs_dir() -> Path:
    path = Path(tempfile.mkdtemp(prefix="rangekv-chaos-certs-"))
    atexit.register(shutil.rmtree, path, True)
    ensure_dev_certs(path, datetime.datetime.now(datetime.UTC))
    return path


@functools.cache
def _opener() -> ChannelOpener:
    return node_channels(SecurityConfig(certs_dir=certs_dir()))


def channel(address: str) -> grpc.aio.Channel:
    """A channel to any process of a chaos cluster, as a node (mutual TLS)."""
    return _opener()(address)
