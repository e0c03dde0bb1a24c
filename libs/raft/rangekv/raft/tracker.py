"""Membership and the quorum arithmetic over it.

Membership changes one node at a time (no joint consensus), so every quorum
question is a simple majority of `voters`. Learners have a Progress (they
receive the log) but are absent from `voters`, so they never count toward a
commit, an election, CheckQuorum or a lease.

Every iteration is over sorted ids so the order of outgoing messages is a
pure function of the inputs.
"""

from __future__ import annotations

import enum

from .progress import Progress
from .types import ConfState


class VoteResult(enum.Enum):
    PENDING = 0
    WON = 1
    LOST = 2


def quorum_value(values: list[int]) -> int:
    """Largest v such that a majority of `values` are >= v (0 if empty)."""
    if not values:
        return 0
    values.sort()
    return values[len(values) - (len(values) // 2 + 1)]


class ProgressTracker:
    """Voters, learners, each peer's Progress, and the votes of the current election."""

    __slots__ = ("_ids", "learners", "max_inflight", "progress", "voters", "votes")

    def __init__(self, max_inflight: int) -> None:
        self.max_inflight = max_inflight
        self.voters: tuple[int, ...] = ()
        self.learners: tuple[int, ...] = ()
        self.progress: dict[int, Progress] = {}
        self.votes: dict[int, bool] = {}
        self._ids: tuple[int, ...] = ()

    def conf_state(self) -> ConfState:
        return ConfState(self.voters, self.learners)

    def ids(self) -> tuple[int, ...]:
        """All peers with a Progress (voters and learners), sorted."""
        return self._ids

    def is_voter(self, node_id: int) -> bool:
        return node_id in self.voters

    def is_single_voter(self, node_id: int) -> bool:
        return self.voters == (node_id,)

    # -- membership -------------------------------------------------------

    def reset_membership(self, cs: ConfState, next_index: int) -> None:
        """Adopt `cs` wholesale (start-up, snapshot restore); progress starts over."""
        self.voters = tuple(sorted(set(cs.voters)))
        self.learners = tuple(sorted(set(cs.learners) - set(self.voters)))
        self.progress = {}
        for nid in self.voters:
            self.progress[nid] = Progress(next_index, self.max_inflight)
        for nid in self.learners:
            self.progress[nid] = Progress(next_index, self.max_inflight, is_learner=True)
        self._ids = tuple(sorted(self.progress))

    def set_voter(self, node_id: int, next_index: int) -> None:
        if node_id in self.learners:
            self.learners = tuple(i for i in self.learners if i != node_id)
        if node_id not in self.voters:
            self.voters = tuple(sorted((*self.voters, node_id)))
        pr = self.progress.get(node_id)
        if pr is None:
            pr = Progress(next_index, self.max_inflight)
            # A new peer is presumed alive, so CheckQuorum does not count it against us yet.
            pr.recent_active = True
            self.progress[node_id] = pr
        pr.is_learner = False
        self._ids = tuple(sorted(self.progress))

    def set_learner(self, node_id: int, next_index: int) -> None:
        if node_id in self.voters:
            self.voters = tuple(i for i in self.voters if i != node_id)
        if node_id not in self.learners:
            self.learners = tuple(sorted((*self.learners, node_id)))
        pr = self.progress.get(node_id)
        if pr is None:
            pr = Progress(next_index, self.max_inflight)
            pr.recent_active = True
            self.progress[node_id] = pr
        pr.is_learner = True
        self._ids = tuple(sorted(self.progress))

    def remove(self, node_id: int) -> None:
        self.voters = tuple(i for i in self.voters if i != node_id)
        self.learners = tuple(i for i in self.learners if i != node_id)
        self.progress.pop(node_id, None)
        self.votes.pop(node_id, None)
        self._ids = tuple(sorted(self.progress))

    # -- quorum questions -------------------------------------------------

    def committed(self) -> int:
        """Highest index replicated (matched) on a majority of voters."""
        prs = self.progress
        return quorum_value([prs[v].match for v in self.voters if v in prs])

    def quorum_acked_round(self) -> int:
        """Highest lease round echoed by a majority of voters (see lease.py)."""
        prs = self.progress
        return quorum_value([prs[v].acked_round for v in self.voters if v in prs])

    def quorum_active(self, self_id: int) -> bool:
        """CheckQuorum: did a majority of voters answer since the last check?"""
        active = 0
        for v in self.voters:
            pr = self.progress.get(v)
            if v == self_id or (pr is not None and pr.recent_active):
                active += 1
        return active >= len(self.voters) // 2 + 1 if self.voters else False

    def reset_recent_active(self, self_id: int) -> None:
        for nid, pr in self.progress.items():
            pr.recent_active = nid == self_id

    # -- elections --------------------------------------------------------

    def reset_votes(self) -> None:
        self.votes = {}

    def record_vote(self, node_id: int, granted: bool) -> None:
        # First answer wins: a duplicated or reordered response cannot flip a vote.
        self.votes.setdefault(node_id, granted)

    def tally_votes(self) -> tuple[int, int, VoteResult]:
        granted = rejected = 0
        for v in self.voters:
            ans = self.votes.get(v)
            if ans is True:
                granted += 1
            elif ans is False:
                rejected += 1
        q = len(self.voters) // 2 + 1
        if granted >= q:
            return granted, rejected, VoteResult.WON
        if granted + (len(self.voters) - granted - rejected) >= q:
            return granted, rejected, VoteResult.PENDING
        return granted, rejected, VoteResult.LOST
