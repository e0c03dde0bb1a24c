"""Real network partitions for the chaos harness: one Linux network namespace per raftnode.

Layout of a `NetLab` for nodes 1..N (names carry the harness pid, so concurrent
runs never share anything and leftovers of dead runs can be swept):

* namespace ``rkchaos-<pid>-n<i>`` per node; inside it, ``lo`` is up and holds
  the node's identity address ``10.<k>.0.<i>/32`` (``k`` is a second octet in
  200..249 that no route of the root namespace uses yet);
* a veth pair ``<tag>r<i>`` (root) -- ``<tag>n<i>`` (node ``i``) joins each node
  to the root namespace, where metarange, gateways and the harness live: the
  root end holds the host address ``10.<k>.255.1/32`` (the same address on each
  root end) and a /32 route to the node; the node end a /32 route to the host
  address. This link is never cut: gateways and the harness always reach a node;
* a full mesh of node-to-node veth pairs: ``<tag>p<i><j>`` in namespace ``i``
  is joined to ``<tag>p<j><i>`` in namespace ``j``, with a /32 route to the
  peer on each end. No namespace has a default route and the root namespace
  does not forward, so two nodes can only talk over their own link.

A cut sets both ends of a node-to-node link down: the kernel drops the /32
routes through it, so a new connection to the peer fails at once with
ENETUNREACH while an established TCP connection just stops delivering (its
segments are dropped locally and retransmitted with backoff) until gRPC
keepalive (10 s + 5 s on the raft transport) or the heal. A heal sets the link
up again and restores both routes; the retransmissions then get through.

Everything is made with `ip` (iproute2) as root; `NetLab.setup` raises
`NetnsUnavailable` with the reason when that is not possible, and the harness
then runs without partition faults and says so in its report.
"""

from __future__ import annotations

import itertools
import os
import re
import subprocess
from collections.abc import Iterable

NS_PREFIX = "rkchaos-"
_NS_RE = re.compile(r"^rkchaos-(\d+)-n\d+")
_LINK_RE = re.compile(r"^rk([0-9a-f]+)x[rnp]\d+")


class NetnsUnavailable(RuntimeError):
    """Network namespaces cannot be made here (not root, no iproute2, no veth...)."""


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    try:
        done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise NetnsUnavailable(f"ip {' '.join(args)}: {exc}") from exc
    if check and done.returncode != 0:
        raise NetnsUnavailable(f"ip {' '.join(args)}: {done.stderr.strip() or done.returncode}")
    return done


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep_dead_runs() -> list[str]:
    """Delete namespaces and root links left by harness processes that are gone."""
    removed = []
    listing = ip("netns", "list", check=False).stdout
    for line in listing.splitlines():
        name = line.split()[0] if line.split() else ""
        m = _NS_RE.match(name)
        if m and not _pid_alive(int(m.group(1))):
            ip("netns", "del", name, check=False)
            removed.append(name)
    for line in ip("-o", "link", "show", check=False).stdout.splitlines():
        parts = line.split(":")
        if len(parts) < 2:
            continue
        name = parts[1].strip().split("@")[0]
        m = _LINK_RE.match(name)
        if m and not _pid_alive(int(m.group(1), 16)):
            ip("link", "del", name, check=False)
            removed.append(name)
    return removed


def _octet_in_use(k: int) -> bool:
    text = ip("-4", "route", "show", "table", "all", check=False).stdout
    text += ip("-4", "addr", "show", check=False).stdout
    return f"10.{k}." in text


class NetLab:
    """Namespaces, links and routes for `node_ids`; see the module docstring."""

    def __init__(self, node_ids: Iterable[int], pid: int | None = None) -> None:
        self.ids = sorted(node_ids)
        if not self.ids or self.ids[0] < 1 or self.ids[-1] > 9:
            raise ValueError("NetLab handles node ids 1..9")
        self.pid = os.getpid() if pid is None else pid
        self.tag = f"rk{self.pid:x}x"
        self.octet = 0
        self.created: list[str] = []
        self.cut: set[frozenset[int]] = set()

    # --- names and addresses

    def ns(self, i: int) -> str:
        return f"{NS_PREFIX}{self.pid}-n{i}"

    def node_ip(self, i: int) -> str:
        return f"10.{self.octet}.0.{i}"

    @property
    def host_ip(self) -> str:
        return f"10.{self.octet}.255.1"

    def prefix(self, i: int) -> list[str]:
        """The command prefix that runs a process inside node `i`'s namespace (it execs,
        so the pid is the process's own and signals reach it)."""
        return ["ip", "netns", "exec", self.ns(i)]

    def _peer_link(self, i: int, j: int) -> str:
        return f"{self.tag}p{i}{j}"

    def pairs(self) -> list[frozenset[int]]:
        return [frozenset(p) for p in itertools.combinations(self.ids, 2)]

    # --- lifecycle

    def setup(self) -> None:
        if os.geteuid() != 0:
            raise NetnsUnavailable("not root")
        sweep_dead_runs()
        start = 200 + self.pid % 50
        for k in [*range(start, 250), *range(200, start)]:
            if not _octet_in_use(k):
                self.octet = k
                break
        else:
            raise NetnsUnavailable("no free 10.k.0.0/16 subnet (k in 200..249)")
        try:
            self._build()
        except BaseException:
            self.cleanup()
            raise

    def _build(self) -> None:
        host = self.host_ip
        for i in self.ids:
            ns = self.ns(i)
            ip("netns", "add", ns)
            self.created.append(ns)
            ip("-n", ns, "link", "set", "lo", "up")
            ip("-n", ns, "addr", "add", f"{self.node_ip(i)}/32", "dev", "lo")
            root_end, node_end = f"{self.tag}r{i}", f"{self.tag}n{i}"
            ip("link", "add", root_end, "type", "veth", "peer", "name", node_end, "netns", ns)
            ip("addr", "add", f"{host}/32", "dev", root_end)
            ip("link", "set", root_end, "up")
            ip("-n", ns, "link", "set", node_end, "up")
            ip("route", "add", f"{self.node_ip(i)}/32", "dev", root_end, "src", host)
            ip("-n", ns, "route", "add", f"{host}/32", "dev", node_end, "src", self.node_ip(i))
        for i, j in itertools.combinations(self.ids, 2):
            a, b = self._peer_link(i, j), self._peer_link(j, i)
            ip(
                "link", "add", a, "netns", self.ns(i), "type", "veth",
                "peer", "name", b, "netns", self.ns(j),
            )  # fmt: skip
            self._set_link(i, j, up=True)

    def cleanup(self) -> None:
        """Delete every namespace of this lab (their veths go with them). Idempotent."""
        for ns in self.created:
            ip("netns", "del", ns, check=False)
        for i in self.ids:  # a root end whose peer never reached its namespace
            if ip("link", "show", f"{self.tag}r{i}", check=False).returncode == 0:
                ip("link", "del", f"{self.tag}r{i}", check=False)
        self.created = []
        self.cut.clear()

    # --- faults

    def _set_link(self, i: int, j: int, *, up: bool) -> None:
        state = "up" if up else "down"
        for a, b in ((i, j), (j, i)):
            dev = self._peer_link(a, b)
            ip("-n", self.ns(a), "link", "set", dev, state)
            if up:
                ip(
                    "-n", self.ns(a), "route", "replace", f"{self.node_ip(b)}/32",
                    "dev", dev, "src", self.node_ip(a),
                )  # fmt: skip

    def cut_links(self, pairs: Iterable[frozenset[int]]) -> list[frozenset[int]]:
        done = []
        for pair in pairs:
            i, j = sorted(pair)
            self._set_link(i, j, up=False)
            self.cut.add(frozenset(pair))
            done.append(frozenset(pair))
        return done

    def isolate(self, node: int) -> list[frozenset[int]]:
        """Cut every raft link of `node` (its link to the root namespace stays up)."""
        return self.cut_links(frozenset((node, j)) for j in self.ids if j != node)

    def split(self, side: Iterable[int]) -> list[frozenset[int]]:
        """Cut every link between `side` and the other nodes."""
        a = set(side)
        return self.cut_links(frozenset((i, j)) for i in a for j in self.ids if j not in a)

    def heal(self) -> int:
        """Restore every cut link; returns how many were cut."""
        n = len(self.cut)
        for pair in sorted(self.cut, key=sorted):
            i, j = sorted(pair)
            self._set_link(i, j, up=True)
        self.cut.clear()
        return n

    def routes(self, i: int) -> str:
        return ip("-n", self.ns(i), "route", "show", check=False).stdout


def try_netlab(node_ids: Iterable[int]) -> tuple[NetLab | None, str]:
    """A set-up lab, or None and the reason it is unavailable."""
    if os.environ.get("RANGEKV_CHAOS_NO_NETNS"):
        return None, "disabled by RANGEKV_CHAOS_NO_NETNS"
    lab = NetLab(node_ids)
    try:
        lab.setup()
    except NetnsUnavailable as exc:
        return None, str(exc)
    return lab, ""
