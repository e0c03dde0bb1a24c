"""The joint linearizability search over keys tied together by scans.

A SCAN observed every key of its span at one instant, so the keys some scan
ties together are checked as one object (see :mod:`rangekv.check.partition`)
whose state is the tuple of the per-key states, packed into one int
(:mod:`rangekv.check.component_model`).  The search is the single-key one
(:mod:`rangekv.check.linearizability`: Wing & Gong with Lowe's cache over
a doubly linked list of call and return entries, unknown operations tried
after the OK candidates, success once every OK operation is placed) over
that state.  A SCAN is a read: legal iff every key of the component in its
span holds what the scan's rows say (its value, or absent).

*Why each pruning rule holds.*  Each rule of the single-key search was
re-derived for the tuple state; some had to be restricted, some are new.
Below, a *completion* of a configuration is a sequence of the unplaced
operations (OK ones all, unknown ones optionally) that is legal from its
state and respects real time; ``a`` may precede ``b`` unless ``a`` was
invoked after ``b`` completed.  Every rule keeps at least one completion
reachable whenever one exists.

* Reads are linearized at once.  An operation that leaves the state alone
  (GET, SCAN, DELETE that found nothing, CAS that did not swap) and is
  legal now is placed without branching.  Given any completion, moving
  that read to the front is still one: it is a candidate, so nothing
  unplaced had to precede it; it observes the current state, which it
  accepts; and it changes no key, so every operation it jumps over observes
  what it did before.  Nothing here depends on the number of keys.
* Only related keys before the deadline (new).  Let ``X`` be the first
  unplaced OK operation to complete, and ``R`` the keys of ``X`` closed
  under "an unplaced candidate scan touching a key of ``R`` adds every key
  of its span".  If a completion exists, one exists in which everything
  before ``X`` touches only ``R``: every operation before ``X`` was invoked
  before ``X`` completed, so it is a candidate, and a scan among them that
  touches ``R`` lies inside ``R``.  Move every operation before ``X`` that
  touches a key outside ``R`` (none of them touches ``R``) to just after
  ``X``, in order.  Each observes the same states as before, so does
  everything else, and real time allows it: a moved OK operation completes
  no earlier than ``X``, hence no earlier than the invocation of anything
  it jumps over, and an unknown one has no completion.  So when stuck
  before ``X``, the search tries only writes and unknown operations on
  ``R``.  This keeps independent keys from multiplying each other's
  branches between two scans.
* Dead values, per key, with deadlines.  When a write is about to move key
  ``k`` off value ``s``, and some unplaced OK operation ``N`` needs ``k`` =
  ``s`` (a GET or SCAN that saw it, a CAS that expects it), ``N`` can only
  be satisfied after some unplaced operation writes ``s`` to ``k`` again,
  and that writer must precede ``N``, so it must be invoked before ``N``
  completes.  If none is (in particular if none is left at all), the
  branch is dead.  Only writes to ``k`` change ``k``: this is the
  single-key rule for key ``k``, sharpened by the deadline.
* Short-lived values (new).  When a write is about to give ``k`` a value
  ``v`` that no unplaced operation can write again, let ``E`` be the
  unplaced OK operation on ``k``, first to complete, that cannot be
  linearized while ``k`` holds ``v`` without failing or changing it (a read
  of another value, a write of another value, a delete, a CAS of anything
  but ``v`` to ``v``).  ``E`` must be placed, and ``v`` is gone for good at
  the latest then, so every operation needing ``k`` = ``v`` must precede
  ``E``: be invoked before ``E`` completes and, if it is a scan, find each
  other key it covers already holding what it saw or writable by an
  unplaced operation invoked before ``E`` completes.  Otherwise: dead.
  This catches a write placed too early (before a delete that in truth
  came first) at once instead of at the deadline of the scan it starves.
* Unknown rules 1 (an unknown operation that would not change the state is
  not placed) and 2 (unknown operations with identical effect -- same key,
  same transition -- are interchangeable and are placed in invocation
  order; each class offers its next member) hold as before: neither looks
  at other keys.
* Unknown rule 3: right after an unknown operation moved key ``k`` from
  ``s``, an operation on ``k`` that was legal in ``s`` and sets ``k``
  regardless of it is not placed: it would erase the unknown effect
  unobserved, and the sibling configuration without the unknown operation
  (same OK operations placed, hence the same candidates) places it and
  keeps the unknown operation for later.
* Unknown rule 4 (restricted for several keys).  Unknown operations have
  no completion, so one can always move later, past any operation on
  other keys, or be dropped at the end.  Hence some completion has every
  run of consecutive unknown operations sorted by key and followed by an
  OK operation that touches every key of the run: while one does not,
  move the run's offending operation past that OK operation (a measure,
  the OK operations after unknown ones, drops).  So after an unknown
  operation on ``k`` the search places unknown operations on keys >= ``k``
  only; a run over several keys must be covered by a pending scan; and an
  OK write after a run must be on the run's one key.  The key set of the
  run is part of the cache key of a configuration it ends in.
* Unknown rule 5 (new).  A present value no unplaced operation tests --
  none needs it, none is a CAS that must not find it, no unknown CAS fires
  on it -- is as good as any other such value forever after: two blind
  unknown writes of such values to ``k`` (or two unknown CASes that fire
  on the same value and write such values) lead to configurations whose
  completions map one-to-one.  Of those offered together, one is tried.

*The cache.*  Besides Lowe's exact cache of configurations entered, dead
configurations are remembered by everything but their set of placed
unknown operations: a configuration equal to a dead one except that it
has placed more unknown operations (a superset) has fewer ways to go on,
so it is dead too.  Refuting a history means exhausting every order of
the operations before the violation, and without this the same orders
came back once per subset of unknown operations used on the way.

The set of placed OK operations is a Python int bitset kept shifted by
the lowest unplaced operation, so it stays as short as the window of
concurrent operations even in histories of 100,000s of operations.  The
unknown classes sit on lists per key (blind writes) and per (key, value)
(CASes that fire on that value), so the search only walks classes that
would fire.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Sequence

from rangekv.check.component_model import (
    ABSENT,
    M_CAS,
    M_DEL,
    M_NOT,
    M_READ,
    M_SET,
    ComponentModel,
)
from rangekv.check.history import Operation
from rangekv.check.wgl import CHECK_CLOCK_EVERY, SearchTimeout, build_lists

__all__ = ["UNKNOWN_FRAME", "ComponentSearch", "Frame"]

# Search modes and the ways an operation can have been placed.
_M_READS, _M_WRITES, _M_UNKNOWN, _M_BACKTRACK = range(4)
_FORCED, _BRANCH, UNKNOWN_FRAME = range(3)

# A frame: (node, how it was placed, previous state, previous low, previous
# placed-bits, stuck node, candidates left to try -- for an unknown op: the
# list it came from --, related keys, previous run keys, pending scans).
Frame = tuple[int, int, int, int, int, int, int, int, int, tuple[int, ...]]


class ComponentSearch(ComponentModel):
    """The joint search for one component.  Built once, run once."""

    def __init__(self, keys: Sequence[bytes], ops: Sequence[Operation]) -> None:
        super().__init__(keys, ops)
        self.lists = build_lists(
            [o.invoke for o in self.ok_ops],
            [o.complete for o in self.ok_ops],
            [o.invoke for o in self.unk_ops],
        )
        self.build_class_lists(self.lists.unk_rank, len(self.lists.rank))
        self.deepest: tuple[list[Frame], int, int, int] | None = None

    def run(self, deadline: float | None, clock: Callable[[], float]) -> bool:  # noqa: C901, PLR0912, PLR0915 -- the multi-key search, inlined on purpose: the hot loop of every checked history
        """Depth-first search; True if a linearization exists."""
        m = len(self.ok_ops)
        if m == 0:
            return True
        L = self.lists
        nxt, prv, node_op, node_call = L.nxt, L.prv, L.node_op, L.node_call
        match, rank, unk_rank = L.match, L.rank, L.unk_rank
        head, tail = L.head, L.tail
        ok_code, ok_k, ok_shift = self.ok_code, self.ok_k, self.ok_shift
        ok_mask, ok_want, ok_a, ok_b = self.ok_mask, self.ok_want, self.ok_a, self.ok_b
        ok_kmask, ok_cons, ok_cons1, ok_prod = (
            self.ok_kmask,
            self.ok_cons,
            self.ok_cons1,
            self.ok_prod,
        )
        unk_prod = self.unk_prod
        base, shift, field = self.base, self.shift, self.field
        classes, prod_classes = self.classes, self.prod_classes
        cls_k = [sig[0] for sig in self.cls_sig]
        cls_a = [sig[2] for sig in self.cls_sig]
        cls_b = [sig[3] for sig in self.cls_sig]
        cls_count = [len(c) for c in classes]
        cls_placed = [0] * len(classes)
        cnxt, cprv, first_rank = self.cnxt, self.cprv, self.first_rank
        set_head, maybe_head = self.set_head, self.maybe_head
        # Unplaced ops that need / can create each (key, value).
        cons_left = [0] * (self.n_global + 1)
        prod_left = [0] * (self.n_global + 1)
        for cons in ok_cons:
            for g in cons:
                cons_left[g] += 1
        for g in ok_prod:
            prod_left[g] += 1
        for g in unk_prod:
            prod_left[g] += 1
        # Unplaced ops that tell a value apart from others without needing it:
        # a CAS that must not find it, an unknown CAS that fires on it.
        ok_ne = self.ok_ne
        ne_left = [0] * (self.n_global + 1)
        for g in ok_ne:
            ne_left[g] += 1
        maybe_left = [0] * (self.n_global + 1)
        for c, (k, code, a, _) in enumerate(self.cls_sig):
            if code != M_SET:
                maybe_left[base[k] + a] += len(classes[c])
        never = len(rank) + len(unk_rank) + 1

        def doomed(g: int, own: int) -> bool:
            # Does leaving value g strand an unplaced op that needs it?  It
            # does if that op must complete before any unplaced op that could
            # write g again is invoked (see the module docstring).
            first_unk = never
            for c in prod_classes[g]:
                if cls_placed[c] < cls_count[c]:
                    r = unk_rank[classes[c][cls_placed[c]]]
                    if r < first_unk:
                        first_unk = r
            node = nxt[head]
            while node != tail:
                j = node_op[node]
                if j != own:
                    if node_call[node]:
                        if ok_prod[j] == g:
                            return False
                    elif g in ok_cons[j]:
                        return rank[node] < first_unk
                node = nxt[node]
            return False

        needers, writers = self.needers, self.writers
        call_rank = [rank[n] for n in L.call_node]

        def placed(j: int) -> bool:
            return j < low or bool(bits >> (j - low) & 1)

        def short_lived(k: int, v: int, own: int) -> bool:  # noqa: C901 -- part of the inlined hot loop
            # Key k is about to hold v, which nothing else can write again:
            # every op that needs it must come before the first op on k that
            # cannot leave it alone (see the module docstring).  Dead if one
            # is invoked too late, or is a scan that also needs another key's
            # value that nothing can write in time.
            sh = shift[k]
            node = nxt[head]
            while node != tail:
                if not node_call[node]:
                    j = node_op[node]
                    if j != own and ok_kmask[j] >> k & 1:
                        code = ok_code[j]
                        if code == M_READ:
                            ends = (ok_want[j] >> sh) & field != v
                        elif code == M_NOT:
                            ends = ok_a[j] == v
                        elif code == M_SET:
                            ends = ok_a[j] != v
                        else:
                            ends = code == M_DEL or ok_a[j] != v or ok_b[j] != v
                        if ends:
                            break
                node = nxt[node]
            else:
                return False
            end = rank[node]
            need = needers[base[k] + v]
            for j in need[bisect.bisect_left(need, low) :]:
                if j == own or placed(j):
                    continue
                if call_rank[j] >= end:
                    return True
                if ok_k[j] >= 0:
                    continue
                others = ok_kmask[j] & ~(1 << k)
                while others:
                    k2 = (others & -others).bit_length() - 1
                    others &= others - 1
                    w = (ok_want[j] >> shift[k2]) & field
                    if (state >> shift[k2]) & field != w and not writable(base[k2] + w, end):
                        return True
            return False

        def writable(g: int, end: int) -> bool:
            # Could an unplaced op write g before `end`?
            for c in prod_classes[g]:
                if cls_placed[c] < cls_count[c] and unk_rank[classes[c][cls_placed[c]]] < end:
                    return True
            can = writers[g]
            for j in can[bisect.bisect_left(can, low) :]:
                if call_rank[j] >= end:
                    return False
                if not placed(j):
                    return True
            return False

        state = 0  # every key absent
        low = 0  # every OK op with index < low is placed
        bits = 0  # bit j: OK op low + j is placed
        unk_bits = 0
        ok_left = m
        cache: set[tuple[int, ...]] = set()
        # Dead configurations by everything but their placed unknown ops: one
        # with more of those placed (fewer left to use) is dead as well.
        dead_with: dict[tuple[int, ...], list[int]] = {}
        stack: list[Frame] = []
        best_depth = -1
        steps = 0
        scan_masks: list[int] = []
        scans: tuple[int, ...] = ()  # keys of each pending candidate scan

        mode = _M_READS
        node = nxt[head]
        stuck = left = related = ukeys = ulp = i = ns = 0
        run_keys = 0  # keys of the unknown ops placed since the last OK op
        how = _FORCED
        while True:
            steps += 1
            if deadline is not None and steps % CHECK_CLOCK_EVERY == 0 and clock() > deadline:
                raise SearchTimeout

            if mode == _M_READS:
                # Place a legal read among the candidates at once (see the
                # module docstring); otherwise find the first completion.
                left = 0
                scan_masks.clear()
                while node_call[node]:
                    i = node_op[node]
                    code = ok_code[i]
                    if code == M_READ:
                        if state & ok_mask[i] == ok_want[i]:
                            break
                        if ok_k[i] < 0:
                            scan_masks.append(ok_kmask[i])
                    elif code == M_NOT and state & ok_mask[i] != ok_want[i]:
                        break
                    left += 1
                    node = nxt[node]
                if not node_call[node]:
                    # Stuck before this completion: `left` ops were invoked
                    # before it; only those on keys related to it are tried.
                    stuck = node
                    scans = tuple(scan_masks)
                    related = ok_kmask[node_op[node]]
                    grown = True
                    while grown:
                        grown = False
                        for sm in scans:
                            if sm & related and sm | related != related:
                                related |= sm
                                grown = True
                    mode = _M_WRITES
                    continue
                ns = state
                how = _FORCED
            elif mode == _M_WRITES:
                # Candidates earliest deadline first: walk the completions
                # from `stuck` on, skipping ops invoked after it.
                if left == 0:
                    mode = _M_UNKNOWN
                    if run_keys:
                        # Rule 4: after an unknown op on key k, only keys >= k;
                        # rule 3: on k itself, no blind write (skip k's list of
                        # blind writes, start at its current-value list).
                        k = cls_k[stack[-1][0] - 1]
                        ukeys, ulp, node = related & -(1 << k), 4 * k, set_head[k]
                    else:
                        k = (related & -related).bit_length() - 1
                        ukeys, ulp, node = related, 4 * k, cnxt[set_head[k]]
                    continue
                if node_call[node] or rank[match[node]] > rank[stuck]:
                    node = nxt[node]
                    continue
                left -= 1
                i = node_op[node]
                code = ok_code[i]
                if code < M_SET or not ok_kmask[i] & related:
                    node = nxt[node]
                    continue
                sh = ok_shift[i]
                cur = (state >> sh) & field
                if code == M_SET:
                    nl = ok_a[i]
                elif code == M_CAS and cur == ok_a[i]:
                    nl = ok_b[i]
                elif code == M_DEL and cur != ABSENT:
                    nl = ABSENT
                else:
                    node = nxt[node]
                    continue
                if run_keys:
                    if run_keys != ok_kmask[i]:
                        node = nxt[node]  # rule 4: an unknown op before it could wait
                        continue
                    # Rule 3: it would erase the unknown op's effect unobserved.
                    before = (stack[-1][2] >> sh) & field
                    if (
                        code == M_SET
                        or (code == M_DEL and before != ABSENT)
                        or (code == M_CAS and before == ok_a[i])
                    ):
                        node = nxt[node]
                        continue
                ns = state + ((nl - cur) << sh)
                how = _BRANCH
                node = match[node]  # placement works on the call node
            elif mode == _M_UNKNOWN:
                if first_rank[node] > rank[stuck]:
                    # The end of a list (or of its classes invoked in time):
                    # on to the key's current-value list, then the next key.
                    k = ulp >> 2
                    if not ulp & 1:
                        ulp = 4 * k + 1
                        h = maybe_head[base[k] + ((state >> shift[k]) & field)]
                        if h:
                            node = cnxt[h]
                            continue
                    rest = ukeys >> (k + 1)
                    if rest:
                        k += (rest & -rest).bit_length()
                        ulp, node = 4 * k, cnxt[set_head[k]]
                        continue
                    # Every candidate failed from this configuration.
                    if len(stack) > best_depth:
                        best_depth = len(stack)
                        self.deepest = (stack[:], state, stuck, related)
                    mode = _M_BACKTRACK
                    continue
                c = node - 1
                u = classes[c][cls_placed[c]]
                if unk_rank[u] > rank[stuck]:
                    node = cnxt[node]
                    continue
                k = cls_k[c]
                sh = shift[k]
                cur = (state >> sh) & field
                nl = cls_b[c] if ulp & 1 else cls_a[c]
                if nl == cur:  # rule 1
                    node = cnxt[node]
                    continue
                if run_keys and run_keys != 1 << k:
                    # Rule 4: unknown ops on several keys must all be read by
                    # the next OK op: a pending scan covering every one.
                    wide = run_keys | 1 << k
                    if not any(sm & wide == wide for sm in scans):
                        node = cnxt[node]
                        continue
                g_new = base[k] + nl
                if nl and not (cons_left[g_new] or ne_left[g_new] or maybe_left[g_new]):
                    # Rule 5: a present value nothing will ever test is as good
                    # as any other; try one such write per list.
                    if ulp & 2:
                        node = cnxt[node]
                        continue
                    ulp |= 2
                g = base[k] + cur
                new_unk = unk_bits | (1 << u)
                ns = state + ((nl - cur) << sh)
                ukey = (low, bits, new_unk, ns, k, cur, run_keys)
                if (
                    ukey in cache
                    or any(
                        not d & ~new_unk
                        for d in dead_with.get((low, bits, ns, k, cur, run_keys), ())
                    )
                    or (cons_left[g] and (not prod_left[g] or doomed(g, -1)))
                    or (cons_left[g_new] and prod_left[g_new] == 1 and short_lived(k, nl, -1))
                ):
                    node = cnxt[node]
                    continue
                cache.add(ukey)
                stack.append(
                    (node, UNKNOWN_FRAME, state, low, bits, stuck, ulp, related, run_keys, scans)
                )
                state, unk_bits = ns, new_unk
                run_keys |= 1 << k
                prod_left[unk_prod[u]] -= 1
                if ulp & 1:
                    maybe_left[base[k] + cls_a[c]] -= 1
                cls_placed[c] += 1
                if cls_placed[c] == cls_count[c]:
                    cnxt[cprv[node]] = cnxt[node]
                    cprv[cnxt[node]] = cprv[node]
                mode = _M_READS
                node = nxt[head]
                continue
            else:  # _M_BACKTRACK: this configuration is dead
                if not stack:
                    return False
                top = stack[-1]
                sig: tuple[int, ...]
                if top[1] == UNKNOWN_FRAME:
                    k = cls_k[top[0] - 1]
                    sig = (low, bits, state, k, (top[2] >> shift[k]) & field, top[8])
                else:
                    sig = (low, bits, state)
                dead_with.setdefault(sig, []).append(unk_bits)
                top_node, how, state, low, bits, stuck, left, related, run_keys, scans = stack.pop()
                if how == UNKNOWN_FRAME:
                    c = top_node - 1
                    if cls_placed[c] == cls_count[c]:
                        cnxt[cprv[top_node]] = top_node
                        cprv[cnxt[top_node]] = top_node
                    cls_placed[c] -= 1
                    u = classes[c][cls_placed[c]]
                    unk_bits ^= 1 << u
                    prod_left[unk_prod[u]] += 1
                    ulp = left
                    if ulp & 1:
                        maybe_left[base[cls_k[c]] + cls_a[c]] += 1
                    ukeys = related & -(1 << cls_k[stack[-1][0] - 1]) if run_keys else related
                    node = cnxt[top_node]
                    mode = _M_UNKNOWN
                    continue
                i = node_op[top_node]
                for g in ok_cons[i]:
                    cons_left[g] += 1
                prod_left[ok_prod[i]] += 1
                ne_left[ok_ne[i]] += 1
                ret = match[top_node]
                nxt[prv[ret]] = ret
                prv[nxt[ret]] = ret
                nxt[prv[top_node]] = top_node
                prv[nxt[top_node]] = top_node
                ok_left += 1
                if how == _BRANCH:
                    node = nxt[ret]
                    mode = _M_WRITES
                # A forced placement failing means its parent fails too.
                continue

            # Linearize OK operation i (at `node`) giving state ns, unless the
            # configuration is known dead or strands a value still needed.
            if i == low:
                grown_bits = bits | 1
                run = (~grown_bits & (grown_bits + 1)).bit_length() - 1
                new_low, new_bits = low + run, grown_bits >> run
            else:
                new_low, new_bits = low, bits | (1 << (i - low))
            key = (new_low, new_bits, unk_bits, ns)
            if key in cache or any(
                not d & ~unk_bits for d in dead_with.get((new_low, new_bits, ns), ())
            ):
                dead = True
            elif ns != state:
                k = ok_k[i]
                g = base[k] + ((state >> shift[k]) & field)
                dead = cons_left[g] > (ok_cons1[i] == g) and (not prod_left[g] or doomed(g, i))
                if not dead:
                    nl = (ns >> shift[k]) & field
                    g_new = base[k] + nl
                    dead = (
                        cons_left[g_new] > (g_new in ok_cons[i])
                        and prod_left[g_new] == 1
                        and short_lived(k, nl, i)
                    )
            else:
                dead = False
            if dead:
                if how == _FORCED:
                    mode = _M_BACKTRACK
                else:
                    node = nxt[match[node]]
                continue
            cache.add(key)
            stack.append((node, how, state, low, bits, stuck, left, related, run_keys, scans))
            state, low, bits = ns, new_low, new_bits
            run_keys = 0
            for g in ok_cons[i]:
                cons_left[g] -= 1
            prod_left[ok_prod[i]] -= 1
            ne_left[ok_ne[i]] -= 1
            ret = match[node]
            nxt[prv[node]] = nxt[node]
            prv[nxt[node]] = prv[node]
            nxt[prv[ret]] = nxt[ret]
            prv[nxt[ret]] = prv[ret]
            ok_left -= 1
            if ok_left == 0:
                return True
            mode = _M_READS
            node = nxt[head]
