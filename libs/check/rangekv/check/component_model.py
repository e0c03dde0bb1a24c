"""The model of several keys tied together by scans, compiled to small ints.

The joint search (:mod:`rangekv.check.component_search`) treats a
component's keys as one object whose state is the tuple of the per-key
states.  As in the single-key model (:mod:`rangekv.check.model`) every
value is interned per key -- ``ABSENT`` (0), ``UNOBSERVED`` (1: every
written value nothing compares against), then one id per value some
operation compares against: a GET's result, a CAS's expectation, an
unswapped CAS's reported value, and every value a scan returned -- so the
inner loop never touches bytes.

The state tuple is packed into one int: key ``k``'s state id sits in bits
``[k * width, (k + 1) * width)``.  That makes every read one comparison:
a GET, a DELETE that found nothing, a CAS that did not swap, or a SCAN,
whatever the number of keys it covers, is legal iff ``state & mask ==
want`` (or ``!=`` for a CAS that reported nothing), and a write replaces
one field.  A SCAN requires, for every key of the component in its span,
the value of its row for that key, or ``ABSENT`` where it returned none.

For the dead-value pruning each state id of each key also gets a *global*
id (``base[k] + id``), so "how many unplaced operations still need / can
still produce this value of this key" is one array per component.  The
unknown operations are grouped into classes of identical effect and
threaded on lists the search walks (:meth:`ComponentModel.build_class_lists`).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

from rangekv.check.history import Operation, OpKind, Outcome

# Transition codes.  Reads first: codes below M_SET leave the state alone.
M_READ = 0  # legal iff state & mask == want (GET, DELETE of nothing, CAS saw b, SCAN)
M_NOT = 1  # legal iff state & mask != want (CAS that did not swap, reported nothing)
M_SET = 2  # key k := a (PUT; an unknown DELETE with a = ABSENT)
M_DEL = 3  # OK DELETE that deleted: key k must be present; := ABSENT
M_CAS = 4  # OK CAS that swapped: key k must be a; := b
M_MAYBE = 5  # unknown CAS: if key k is a then := b

ABSENT = 0
UNOBSERVED = 1


class ComponentModel:
    """The operations of one component, compiled.

    ``ok_ops`` (OK outcomes) and ``unk_ops`` (UNKNOWN writes; unknown
    reads and scans constrain nothing and are dropped) are sorted by
    invocation and every ``ok_*`` / ``unk_*`` list is parallel to one of
    them.  Unknown operations with the same effect (same key, code and
    arguments) form a *class*; ``classes`` lists each class's members in
    invocation order.  FAIL operations must already have been removed.
    """

    def __init__(self, keys: Sequence[bytes], ops: Sequence[Operation]) -> None:
        self.keys = list(keys)
        self.kidx = {key: k for k, key in enumerate(self.keys)}
        self.ok_ops = sorted((o for o in ops if o.outcome is Outcome.OK), key=lambda o: o.invoke)
        self.unk_ops = sorted(
            (
                o
                for o in ops
                if o.outcome is Outcome.UNKNOWN and o.kind not in (OpKind.GET, OpKind.SCAN)
            ),
            key=lambda o: o.invoke,
        )
        for o in self.ok_ops:
            if not o.complete >= o.invoke:
                raise ValueError(f"operation completes before it is invoked: {o.describe()}")
            if o.kind is OpKind.PUT and o.value is None:
                raise ValueError(f"PUT without a value: {o.describe()}")
        for o in self.unk_ops:
            if o.kind is OpKind.PUT and o.value is None:
                raise ValueError(f"PUT without a value: {o.describe()}")
        self._intern()
        self._compile()

    # -- values -----------------------------------------------------------

    def _intern(self) -> None:
        observed: list[set[bytes]] = [set() for _ in self.keys]
        for o in self.ok_ops:
            if o.kind is OpKind.SCAN:
                for key, value in o.rows:
                    observed[self.kidx[key]].add(value)
                continue
            seen = observed[self.kidx[o.key]]
            if o.kind is OpKind.GET and o.read is not None:
                seen.add(o.read)
            if o.kind is OpKind.CAS:
                if o.expected is not None:
                    seen.add(o.expected)
                if not o.succeeded and o.read is not None:
                    seen.add(o.read)
        for o in self.unk_ops:
            if o.kind is OpKind.CAS and o.expected is not None:
                observed[self.kidx[o.key]].add(o.expected)
        self.ids: list[dict[bytes, int]] = []
        self.names: list[list[str]] = []
        self.base: list[int] = []
        total = 0
        for values in observed:
            ordered = sorted(values)
            self.ids.append({v: i + 2 for i, v in enumerate(ordered)})
            self.names.append(
                ["<absent>", "<a value no operation observed>", *(repr(v) for v in ordered)]
            )
            self.base.append(total)
            total += len(ordered) + 2
        self.n_global = total
        self.none = total  # the global id meaning "no value"
        self.width = max(len(n) for n in self.names).bit_length() if self.keys else 1
        self.field = (1 << self.width) - 1
        self.shift = [k * self.width for k in range(len(self.keys))]

    def sid(self, k: int, value: bytes | None, *, write: bool) -> int:
        """The state id of ``value`` on key ``k``."""
        if value is None:
            return ABSENT
        got = self.ids[k].get(value)
        if got is None:
            assert write, "observed values are all interned"
            return UNOBSERVED
        return got

    def local(self, state: int, k: int) -> int:
        """Key ``k``'s state id inside a packed state."""
        return (state >> self.shift[k]) & self.field

    def describe_state(self, state: int) -> str:
        """``{key: value, ...}`` for a packed state."""
        parts = [
            f"{key!r}: {self.names[k][self.local(state, k)]}" for k, key in enumerate(self.keys)
        ]
        return "{" + ", ".join(parts) + "}"

    # -- operations ---------------------------------------------------------

    def _compile(self) -> None:
        n = len(self.ok_ops)
        none = self.none
        self.ok_code = [0] * n
        self.ok_k = [-1] * n  # the key a single-key op touches; -1 for a scan
        self.ok_shift = [0] * n
        self.ok_mask = [0] * n
        self.ok_want = [0] * n
        self.ok_a = [0] * n
        self.ok_b = [0] * n
        self.ok_kmask = [0] * n  # bit k set: the op touches key k
        self.ok_cons: list[tuple[int, ...]] = [()] * n  # global ids it needs
        self.ok_cons1 = [none] * n  # for a write: the one global id it needs
        self.ok_prod = [none] * n  # global id it produces
        self.ok_ne = [none] * n  # for a CAS that must not find a value: its global id
        for i, o in enumerate(self.ok_ops):
            if o.kind is OpKind.SCAN:
                self._compile_scan(i, o)
            else:
                self._compile_single(i, o)

        self.unk_k = [self.kidx[o.key] for o in self.unk_ops]
        self.unk_code: list[int] = []
        self.unk_a: list[int] = []
        self.unk_b: list[int] = []
        for o, k in zip(self.unk_ops, self.unk_k, strict=True):
            if o.kind is OpKind.PUT:
                code, a, b = M_SET, self.sid(k, o.value, write=True), 0
            elif o.kind is OpKind.DELETE:
                code, a, b = M_SET, ABSENT, 0
            else:
                a = self.sid(k, o.expected, write=False)
                code, b = M_MAYBE, self.sid(k, o.value, write=True)
            self.unk_code.append(code)
            self.unk_a.append(a)
            self.unk_b.append(b)
        self.unk_prod = [
            self.base[k] + (a if code == M_SET else b)
            for k, code, a, b in zip(self.unk_k, self.unk_code, self.unk_a, self.unk_b, strict=True)
        ]
        # Interchangeable unknown ops (same key and transition) form a class.
        index: dict[tuple[int, int, int, int], int] = {}
        self.classes: list[list[int]] = []
        self.cls_sig: list[tuple[int, int, int, int]] = []
        for u, sig in enumerate(
            zip(self.unk_k, self.unk_code, self.unk_a, self.unk_b, strict=True)
        ):
            c = index.setdefault(sig, len(index))
            if c == len(self.classes):
                self.classes.append([])
                self.cls_sig.append(sig)
            self.classes[c].append(u)

    def _compile_scan(self, i: int, o: Operation) -> None:
        rows = dict(o.rows)
        mask = want = kmask = 0
        cons = []
        for k, key in enumerate(self.keys):
            if not o.covers(key):
                continue
            state = self.sid(k, rows.get(key), write=False)
            mask |= self.field << self.shift[k]
            want |= state << self.shift[k]
            kmask |= 1 << k
            cons.append(self.base[k] + state)
        self.ok_code[i] = M_READ
        self.ok_mask[i], self.ok_want[i], self.ok_kmask[i] = mask, want, kmask
        self.ok_cons[i] = tuple(cons)

    def _compile_single(self, i: int, o: Operation) -> None:
        k = self.kidx[o.key]
        sh, base = self.shift[k], self.base[k]
        self.ok_k[i], self.ok_shift[i], self.ok_kmask[i] = k, sh, 1 << k
        self.ok_mask[i] = self.field << sh

        def read(state: int) -> None:
            self.ok_code[i] = M_READ
            self.ok_want[i] = state << sh
            self.ok_cons[i] = (base + state,)

        if o.kind is OpKind.GET:
            read(self.sid(k, o.read, write=False))
        elif o.kind is OpKind.PUT:
            self.ok_code[i], self.ok_a[i] = M_SET, self.sid(k, o.value, write=True)
            self.ok_prod[i] = base + self.ok_a[i]
        elif o.kind is OpKind.DELETE:
            if o.succeeded:
                self.ok_code[i], self.ok_prod[i] = M_DEL, base + ABSENT
            else:
                read(ABSENT)
        else:
            expected = self.sid(k, o.expected, write=False)
            if o.succeeded:
                new = self.sid(k, o.value, write=True)
                self.ok_code[i], self.ok_a[i], self.ok_b[i] = M_CAS, expected, new
                self.ok_cons[i] = (base + expected,)
                self.ok_cons1[i] = base + expected
                self.ok_prod[i] = base + new
            elif o.read is None:
                self.ok_code[i], self.ok_want[i] = M_NOT, expected << sh
                self.ok_a[i], self.ok_ne[i] = expected, base + expected
            else:
                saw = self.sid(k, o.read, write=False)
                read(saw)
                if saw == expected:  # saw the very value it expected: never legal
                    self.ok_mask[i], self.ok_want[i] = 0, 1

    def build_class_lists(self, unk_rank: Sequence[int], n_entries: int) -> None:
        """Thread the unknown classes on lists the search can walk cheaply.

        Class ``c`` is node ``c + 1``.  A class that sets its key blindly
        (``M_SET``) is on its key's list; a class that swaps only if its key
        holds ``a`` (``M_MAYBE``) is on the list of that (key, value), so the
        search only ever walks classes that would fire.  Each list is
        circular through a sentinel node and ordered by the invocation of
        the class's first member; ``first_rank`` of a sentinel is past every
        entry, so one comparison ends a walk at the end of a list or at the
        first class invoked too late.  Exhausted classes are unlinked
        during the search (and relinked on backtrack).  ``unk_rank`` is
        where each unknown op's invocation falls among the ``n_entries``
        call and return entries of the search's list.

        Also indexes, for the pruning rules, the unknown classes and the OK
        ops that write or need each (key, value).
        """
        n_cls = len(self.classes)
        n_keys = len(self.keys)
        past = n_entries + len(unk_rank) + 1
        self.set_head = [n_cls + 1 + k for k in range(n_keys)]
        self.maybe_head = [0] * (self.n_global + 1)
        members: dict[int, list[int]] = {head: [] for head in self.set_head}
        for c, (k, code, a, _) in enumerate(self.cls_sig):
            if code == M_SET:
                head = self.set_head[k]
            else:
                g = self.base[k] + a
                if not self.maybe_head[g]:
                    self.maybe_head[g] = n_cls + 1 + len(members)  # a new sentinel
                    members[self.maybe_head[g]] = []
                head = self.maybe_head[g]
            members[head].append(c + 1)
        size = n_cls + 1 + len(members)
        self.cnxt = [0] * size
        self.cprv = [0] * size
        self.first_rank = [past] * size
        for c, cls in enumerate(self.classes):
            self.first_rank[c + 1] = unk_rank[cls[0]]
        for head, nodes in members.items():
            ring = [head, *nodes, head]
            for a, b in itertools.pairwise(ring):
                self.cnxt[a] = b
                self.cprv[b] = a
        self.prod_classes: list[list[int]] = [[] for _ in range(self.n_global + 1)]
        for c, (k, code, a, b) in enumerate(self.cls_sig):
            self.prod_classes[self.base[k] + (a if code == M_SET else b)].append(c)
        # The OK ops that need / write each (key, value), in invocation order.
        self.needers: list[list[int]] = [[] for _ in range(self.n_global + 1)]
        self.writers: list[list[int]] = [[] for _ in range(self.n_global + 1)]
        for i, cons in enumerate(self.ok_cons):
            for g in cons:
                self.needers[g].append(i)
            self.writers[self.ok_prod[i]].append(i)

    def step(
        self, code: int, k: int, a: int, b: int, mask: int, want: int, state: int
    ) -> tuple[bool, int]:
        """Apply one transition to a packed state: (legal?, next state).

        The search inlines this; explanations use it.
        """
        if code == M_READ:
            return state & mask == want, state
        if code == M_NOT:
            return state & mask != want, state
        sh = self.shift[k]
        cur = (state >> sh) & self.field
        if code == M_SET:
            return True, state + ((a - cur) << sh)
        if code == M_DEL:
            return cur != ABSENT, state - (cur << sh)
        if code == M_CAS:
            return cur == a, state + ((b - cur) << sh)
        return True, (state + ((b - cur) << sh) if cur == a else state)  # M_MAYBE
