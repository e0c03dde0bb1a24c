"""Data-driven interaction tests: replay scripts in testdata/*.txt against a Cluster.

Script format (our own, line based):

    # a comment (ignored everywhere, as are blank lines)
    > command arg arg key=value
    expected output line
    expected output line
    > next command

Every line after a `> ` command, up to the next command, is that command's
expected output. Set RAFT_TESTDATA_REWRITE=1 to rewrite the files with the
actual output (then review the diff: the scripts are the specification).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
from raft_cluster import Cluster, fire_election_timer

from rangekv.raft import (
    CampaignRefused,
    ConfChange,
    ConfChangeType,
    ConfState,
    Entry,
    EntryType,
    Message,
    MessageType,
    Ready,
)

TESTDATA = Path(__file__).parent / "testdata"
REWRITE = os.environ.get("RAFT_TESTDATA_REWRITE") == "1"

# -- rendering ------------------------------------------------------------------


def fmt_entry(e: Entry) -> str:
    if e.type is EntryType.CONF_CHANGE:
        cc = ConfChange.decode(e.data)
        return f"{e.term}/{e.index} conf:{cc.type.name.lower()}({cc.node_id})"
    return f"{e.term}/{e.index} {e.data.decode()!r}" if e.data else f"{e.term}/{e.index} ''"


def fmt_entries(ents: tuple[Entry, ...] | list[Entry]) -> str:
    if len(ents) > 6:
        return f"[{fmt_entry(ents[0])} .. {fmt_entry(ents[-1])} ({len(ents)})]"
    return "[" + ", ".join(fmt_entry(e) for e in ents) + "]"


def fmt_msg(m: Message) -> str:
    t = m.type
    s = f"{m.sender}->{m.to} {t.name} term={m.term}"
    if t is MessageType.APP:
        s += f" prev={m.log_term}/{m.index} commit={m.commit} round={m.round}"
        if m.entries:
            s += " " + fmt_entries(m.entries)
    elif t is MessageType.APP_RESP:
        if m.reject:
            s += f" REJECT index={m.index} hint={m.log_term}/{m.reject_hint}"
        else:
            s += f" index={m.index}"
        s += f" round={m.round}"
    elif t in (MessageType.VOTE, MessageType.PRE_VOTE):
        s += f" last={m.log_term}/{m.index}" + (" forced" if m.context else "")
    elif t in (MessageType.VOTE_RESP, MessageType.PRE_VOTE_RESP):
        s += " REJECT" if m.reject else ""
    elif t is MessageType.HEARTBEAT:
        s += f" commit={m.commit} round={m.round}"
    elif t is MessageType.HEARTBEAT_RESP:
        s += f" round={m.round}"
    elif t is MessageType.SNAP and m.snapshot is not None:
        md = m.snapshot.metadata
        s += f" snap={md.term}/{md.index} voters={list(md.conf_state.voters)}"
    elif t in (MessageType.READ_INDEX, MessageType.READ_INDEX_RESP):
        s += f" index={m.index} ctx={m.context.decode()}"
    return s


def fmt_ready(nid: int, rd: Ready) -> list[str]:
    out = [f"ready {nid}:"]
    if rd.soft_state is not None:
        out.append(f"  soft lead={rd.soft_state.lead} {rd.soft_state.raft_state.name}")
    if rd.hard_state is not None:
        hs = rd.hard_state
        out.append(f"  hard term={hs.term} vote={hs.vote} commit={hs.commit}")
    if rd.snapshot is not None:
        out.append(f"  snapshot {rd.snapshot.term}/{rd.snapshot.index}")
    if rd.entries:
        out.append(f"  entries {fmt_entries(rd.entries)}")
    if rd.committed_entries:
        out.append(f"  committed {fmt_entries(rd.committed_entries)}")
    out.extend(f"  send {fmt_msg(m)}" for m in rd.messages)
    out.extend(f"  read index={r.index} ctx={r.request_ctx.decode()}" for r in rd.read_states)
    return out


# -- interpreter ------------------------------------------------------------------


class Script:
    """Executes commands against one Cluster and returns their output lines."""

    def __init__(self) -> None:
        self.c: Cluster | None = None

    @property
    def cluster(self) -> Cluster:
        assert self.c is not None, "add-nodes first"
        return self.c

    def run(self, cmd: str, args: list[str], kw: dict[str, str]) -> list[str]:
        handler: Callable[[list[str], dict[str, str]], list[str]] = getattr(
            self, "cmd_" + cmd.replace("-", "_")
        )
        return handler(args, kw)

    def cmd_add_nodes(self, args: list[str], kw: dict[str, str]) -> list[str]:
        n = int(args[0])
        conf: dict[str, object] = {}
        for key, val in kw.items():
            if key in ("voters", "learners", "snapshot-index"):
                continue
            conf[key] = float(val) if key == "lease_duration" else _parse_value(val)
        if self.c is None:
            ids = list(range(1, n + 1))
            voters = _ids(kw["voters"]) if "voters" in kw else ids
            learners = _ids(kw.get("learners", ""))
            self.c = Cluster(
                voters, learners=learners, snapshot_index=int(kw.get("snapshot-index", 0)), **conf
            )
            for nid in ids:
                if nid not in self.c.peers:
                    self.c.add_node(nid, ConfState())
            return []
        start = max(self.c.peers) + 1
        for nid in range(start, start + n):
            self.c.add_node(nid, ConfState())
        return []

    def cmd_campaign(self, args: list[str], kw: dict[str, str]) -> list[str]:
        """The driver's `RawNode.campaign()`; prints the refusal if there is one."""
        try:
            self.cluster.node(int(args[0])).campaign()
        except CampaignRefused as exc:
            return [f"refused: {exc}"]
        return []

    def cmd_election_timeout(self, args: list[str], kw: dict[str, str]) -> list[str]:
        """The node's election timer fires now (raft_cluster.fire_election_timer)."""
        fire_election_timer(self.cluster.node(int(args[0])))
        return []

    def cmd_propose(self, args: list[str], kw: dict[str, str]) -> list[str]:
        try:
            self.cluster.propose(int(args[0]), *(a.encode() for a in args[1:]))
        except Exception as e:
            return [f"error: {type(e).__name__}"]
        return []

    def cmd_propose_conf_change(self, args: list[str], kw: dict[str, str]) -> list[str]:
        kinds = {
            "add": ConfChangeType.ADD_NODE,
            "learner": ConfChangeType.ADD_LEARNER,
            "remove": ConfChangeType.REMOVE_NODE,
        }
        cc = ConfChange(kinds[args[1]], int(args[2]))
        try:
            self.cluster.node(int(args[0])).propose_conf_change(cc)
        except Exception as e:
            return [f"error: {type(e).__name__}"]
        return []

    def cmd_process_ready(self, args: list[str], kw: dict[str, str]) -> list[str]:
        nid = int(args[0])
        rd = self.cluster.process_ready(nid)
        return fmt_ready(nid, rd) if rd is not None else [f"ready {nid}: none"]

    def cmd_deliver_msgs(self, args: list[str], kw: dict[str, str]) -> list[str]:
        c = self.cluster
        targets = {int(a) for a in args}
        before = len(c.delivered)
        pending = [m for m in c.queue if not targets or m.to in targets]
        c.deliver(lambda m: not targets or m.to in targets)
        done = c.delivered[before:]
        out = [f"deliver {fmt_msg(m)}" for m in done]
        out += [f"drop {fmt_msg(m)}" for m in pending if not any(m is d for d in done)]
        return out

    def cmd_stabilize(self, args: list[str], kw: dict[str, str]) -> list[str]:
        c = self.cluster
        out: list[str] = []
        for _ in range(1000):
            progressed = False
            for nid in sorted(c.peers):
                rd = c.process_ready(nid)
                if rd is not None:
                    out.extend(fmt_ready(nid, rd))
                    progressed = True
            if c.queue:
                c.deliver()
                progressed = True
            if not progressed:
                return out
        raise AssertionError("no quiescence")

    def cmd_tick(self, args: list[str], kw: dict[str, str]) -> list[str]:
        n = int(args[1]) if len(args) > 1 else 1
        self.cluster.tick(int(args[0]), n, float(kw.get("now", 0.0)))
        return []

    def cmd_tick_election(self, args: list[str], kw: dict[str, str]) -> list[str]:
        nid = int(args[0])
        n = self.cluster.peers[nid].config.election_tick
        self.cluster.tick(nid, n, float(kw.get("now", 0.0)))
        return []

    def cmd_tick_heartbeat(self, args: list[str], kw: dict[str, str]) -> list[str]:
        nid = int(args[0])
        n = self.cluster.peers[nid].config.heartbeat_tick
        self.cluster.tick(nid, n, float(kw.get("now", 0.0)))
        return []

    def cmd_raft_state(self, args: list[str], kw: dict[str, str]) -> list[str]:
        out = []
        for nid, p in sorted(self.cluster.peers.items()):
            r = p.node.raft
            cs = r.tracker.conf_state()
            out.append(
                f"{nid}: {r.state.name} term={r.term} vote={r.vote} lead={r.lead} "
                f"commit={r.log.committed} applied={r.log.applied} "
                f"voters={list(cs.voters)} learners={list(cs.learners)}"
            )
        return out

    def cmd_status(self, args: list[str], kw: dict[str, str]) -> list[str]:
        st = self.cluster.node(int(args[0])).status()
        out = []
        for nid, pr in sorted(st.progress.items()):
            flags = (" paused" if pr.paused else "") + (" learner" if pr.is_learner else "")
            snap = f" pending_snap={pr.pending_snapshot}" if pr.pending_snapshot else ""
            out.append(
                f"{nid}: {pr.state.name} match={pr.match} next={pr.next} "
                f"inflight={pr.inflight}{snap}{flags}"
            )
        return out or ["not leader"]

    def cmd_raft_log(self, args: list[str], kw: dict[str, str]) -> list[str]:
        log = self.cluster.node(int(args[0])).raft.log
        ents = log.slice(log.first_index(), log.last_index() + 1)
        return [fmt_entry(e) for e in ents] or [f"empty (first={log.first_index()})"]

    def cmd_transfer_leadership(self, args: list[str], kw: dict[str, str]) -> list[str]:
        self.cluster.node(int(args[0])).transfer_leadership(int(args[1]))
        return []

    def cmd_read_index(self, args: list[str], kw: dict[str, str]) -> list[str]:
        self.cluster.node(int(args[0])).read_index(args[1].encode())
        return []

    def cmd_isolate(self, args: list[str], kw: dict[str, str]) -> list[str]:
        self.cluster.isolate(int(args[0]))
        return []

    def cmd_partition(self, args: list[str], kw: dict[str, str]) -> list[str]:
        self.cluster.partition(*(_ids(a) for a in args))
        return []

    def cmd_heal(self, args: list[str], kw: dict[str, str]) -> list[str]:
        self.cluster.heal()
        return []

    def cmd_restart(self, args: list[str], kw: dict[str, str]) -> list[str]:
        self.cluster.restart(int(args[0]))
        return []

    def cmd_compact(self, args: list[str], kw: dict[str, str]) -> list[str]:
        self.cluster.compact(int(args[0]), int(args[1]))
        return []

    def cmd_lease(self, args: list[str], kw: dict[str, str]) -> list[str]:
        ls = self.cluster.node(int(args[0])).lease_status(float(args[1]))
        return [f"{ls.state.name} lead={ls.lead} term={ls.term} expires_at={ls.expires_at:g}"]

    def cmd_report_unreachable(self, args: list[str], kw: dict[str, str]) -> list[str]:
        self.cluster.node(int(args[0])).report_unreachable(int(args[1]))
        return []

    def cmd_report_snapshot(self, args: list[str], kw: dict[str, str]) -> list[str]:
        self.cluster.node(int(args[0])).report_snapshot(int(args[1]), args[2] == "fail")
        return []

    def cmd_applied(self, args: list[str], kw: dict[str, str]) -> list[str]:
        p = self.cluster.peers[int(args[0])]
        return [" ".join(d.decode() for d in p.applied) or "(nothing)"]


def _ids(s: str) -> list[int]:
    return [int(x) for x in s.split(",") if x]


def _parse_value(v: str) -> object:
    if v in ("true", "false"):
        return v == "true"
    return int(v)


# -- file handling -------------------------------------------------------------------


def parse(path: Path) -> list[tuple[str, list[str]]]:
    """(command line, expected output lines) pairs, in file order."""
    cases: list[tuple[str, list[str]]] = []
    for line in path.read_text().splitlines():
        if line.startswith("> "):
            cases.append((line[2:].strip(), []))
        elif line.strip() and not line.startswith("#"):
            assert cases, f"{path.name}: output before the first command: {line!r}"
            cases[-1][1].append(line.rstrip())
    return cases


def execute(path: Path) -> list[tuple[str, list[str], list[str]]]:
    script = Script()
    results = []
    for cmdline, expected in parse(path):
        words = cmdline.split()
        args = [w for w in words[1:] if "=" not in w]
        kw = dict(w.split("=", 1) for w in words[1:] if "=" in w)
        actual = script.run(words[0], args, kw)
        if script.c is not None:
            script.c.assert_consistent()
        results.append((cmdline, expected, actual))
    return results


def rewrite(path: Path, results: list[tuple[str, list[str], list[str]]]) -> None:
    """Keep comments and commands, replace every output block with the actual one."""
    out: list[str] = []
    it = iter(results)
    for line in path.read_text().splitlines():
        if line.startswith("> "):
            _, _, actual = next(it)
            out.append(line)
            out.extend(actual)
        elif line.startswith("#") or not line.strip():
            out.append(line)
    path.write_text("\n".join(out) + "\n")


@pytest.mark.parametrize("path", sorted(TESTDATA.glob("*.txt")), ids=lambda p: p.stem)
def test_interaction(path: Path) -> None:
    results = execute(path)
    if REWRITE:
        rewrite(path, results)
        return
    for cmdline, expected, actual in results:
        assert actual == expected, (
            f"{path.name}: `> {cmdline}`\n--- expected\n"
            + "\n".join(expected)
            + "\n--- actual\n"
            + "\n".join(actual)
        )
