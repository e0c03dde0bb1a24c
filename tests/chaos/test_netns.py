"""The network lab behind the chaos harness's partitions (netns.py), on its own.

Fast (a second or two): namespaces and veths are cheap. Skipped, saying why,
where namespaces cannot be made; the harness then runs without partitions.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator

import pytest
from harness import PARTITION_FAULTS, ChaosCluster, ChaosConfig, Nemesis, partitions_text
from netns import NetLab, ip, sweep_dead_runs, try_netlab

# A line-driven socket agent run inside a namespace:
#   "serve"            -> prints the port of an echo server on the identity address
#   "conn HOST PORT"   -> prints "ok" or the errno name of a fresh connection attempt
#   "open HOST PORT"   -> the same, and keeps the connection for "echo"
#   "echo DATA SECS"   -> on the last connection: sends DATA, prints "got ..." (all it
#                         read until DATA came back) or "timeout"
AGENT = r"""
import errno, socket, sys, threading
conn = None
def echo(c):
    while True:
        data = c.recv(100)
        if not data:
            return
        c.sendall(data)
def serve(host):
    s = socket.socket()
    s.bind((host, 0))
    s.listen()
    def loop():
        while True:
            c, _ = s.accept()
            threading.Thread(target=echo, args=(c,), daemon=True).start()
    threading.Thread(target=loop, daemon=True).start()
    return s.getsockname()[1]
for line in sys.stdin:
    cmd, *args = line.split()
    if cmd == "serve":
        print(serve(args[0]), flush=True)
    elif cmd in ("conn", "open"):
        c = socket.socket()
        c.settimeout(3)
        try:
            c.connect((args[0], int(args[1])))
        except OSError as exc:
            print(errno.errorcode.get(exc.errno, "timeout"), flush=True)
        else:
            if cmd == "open":
                conn = c
            else:
                c.close()
            print("ok", flush=True)
    elif cmd == "echo":
        conn.settimeout(float(args[1]))
        conn.sendall(args[0].encode())
        got = b""
        try:
            while not got.endswith(args[0].encode()):
                got += conn.recv(100)
            print("got", got.decode(), flush=True)
        except TimeoutError:
            print("timeout", flush=True)
"""


class Agent:
    def __init__(self, prefix: list[str]) -> None:
        self.proc = subprocess.Popen(
            [*prefix, sys.executable, "-c", AGENT],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def ask(self, line: str) -> str:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        return self.proc.stdout.readline().strip()

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()


@pytest.fixture
def lab() -> Iterator[NetLab]:
    made, why = try_netlab([1, 2, 3])
    if made is None:
        pytest.skip(f"partitions: unavailable ({why})")
    try:
        yield made
    finally:
        made.cleanup()


def namespaces() -> str:
    return ip("netns", "list", check=False).stdout


def test_cut_link_is_unreachable_and_heal_restores(lab: NetLab) -> None:
    """A cut gives ENETUNREACH for new connections and silence on established ones;
    other links and the root link are untouched; a heal delivers what was sent."""
    servers = {i: Agent(lab.prefix(i)) for i in (2, 3)}
    a1 = Agent(lab.prefix(1))
    root = Agent([])
    try:
        port = {i: servers[i].ask(f"serve {lab.node_ip(i)}") for i in (2, 3)}
        assert a1.ask(f"open {lab.node_ip(2)} {port[2]}") == "ok"
        assert a1.ask("echo before 5") == "got before"

        assert lab.isolate(2)
        assert lab.cut == {frozenset((1, 2)), frozenset((2, 3))}
        assert a1.ask("echo during 1") == "timeout"  # established: silence, no error
        assert a1.ask(f"conn {lab.node_ip(2)} {port[2]}") == "ENETUNREACH"  # new: at once
        assert a1.ask(f"conn {lab.node_ip(3)} {port[3]}") == "ok"  # 1-3 untouched
        assert root.ask(f"conn {lab.node_ip(2)} {port[2]}") == "ok"  # root link untouched

        assert lab.heal() == 2
        # the retransmission of "during" gets through once the link is back
        assert a1.ask("echo after 30") == "got duringafter"
        assert a1.ask(f"conn {lab.node_ip(2)} {port[2]}") == "ok"
    finally:
        for agent in (*servers.values(), a1, root):
            agent.close()


def test_split_cuts_only_across(lab: NetLab) -> None:
    lab.split([1])
    assert lab.cut == {frozenset((1, 2)), frozenset((1, 3))}
    assert f"{lab.node_ip(3)} " in lab.routes(2)
    assert f"{lab.node_ip(2)} " not in lab.routes(1)
    lab.heal()
    assert f"{lab.node_ip(2)} " in lab.routes(1)


def test_cleanup_and_sweep_leave_nothing() -> None:
    made, why = try_netlab([1, 2])
    if made is None:
        pytest.skip(f"partitions: unavailable ({why})")
    made.cleanup()
    assert f"-{os.getpid()}-n" not in namespaces()
    assert made.tag not in ip("link", "show").stdout
    # a lab left behind by a process that is gone is swept by the next setup
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    stale = NetLab([1, 2], pid=gone.pid)
    stale.setup()
    assert stale.ns(1) in namespaces()
    removed = sweep_dead_runs()
    assert stale.ns(1) in removed and stale.ns(2) in removed
    assert stale.ns(1) not in namespaces()
    assert stale.tag not in ip("link", "show").stdout


def test_without_namespaces_the_harness_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    """The fallback: no lab, no partition faults, and the report says why."""
    monkeypatch.setenv("RANGEKV_CHAOS_NO_NETNS", "1")
    lab, why = try_netlab([1, 2, 3])
    assert lab is None and "RANGEKV_CHAOS_NO_NETNS" in why
    assert partitions_text(None, why).startswith("unavailable (")
    cluster = ChaosCluster.__new__(ChaosCluster)
    cluster.lab = None
    nemesis = Nemesis.__new__(Nemesis)
    nemesis.c = cluster
    nemesis.cfg = ChaosConfig(seed=1, duration=0)
    kinds = nemesis.kinds()
    assert kinds and not set(kinds) & set(PARTITION_FAULTS)
