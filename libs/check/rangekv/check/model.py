"""The register model of one key, compiled to small integers for the checker.

The linearizability search applies the model millions of times, so it must
not touch ``bytes`` or enums in its inner loop.  This module turns the
operations of one key into parallel lists of ints once, up front:

* every value is *interned* to a state id: ``ABSENT`` (0) for "no key",
  one id per value that some operation compares against (a GET's result, a
  CAS's expectation, an unswapped CAS's reported value), and
  ``UNOBSERVED`` (1) for every other written value.  Values nobody compares
  against are indistinguishable to the model, and merging them lets the
  search recognise more configurations as equal;
* every operation becomes a transition ``(code, a, b)`` (see the ``T_*``
  constants) -- the outcome is folded in, so an OK GET that read ``v`` and
  an unknown CAS are both one code with two int arguments.  An OK SCAN
  that covers this key is, for this key alone, a GET of it (its row for the
  key, or absent), so it is compiled as one;
* for the dead-value pruning, each OK operation records the state it
  *consumes* (must find) and each operation the state it *produces*.

This is internal to :mod:`rangekv.check`; the public model of an operation
is :class:`rangekv.check.history.Operation`.
"""

from __future__ import annotations

from collections.abc import Sequence

from rangekv.check.history import Operation, OpKind, Outcome

# Transition codes.  Each operation compiles to (code, a, b) over state ids.
T_GET = 0  # OK GET: state must be a
T_SET = 1  # PUT (any outcome) / unknown DELETE: state := a
T_DEL_YES = 2  # OK DELETE that deleted: state must be present; := absent
T_DEL_NO = 3  # OK DELETE that found nothing: state must be absent
T_CAS_YES = 4  # OK CAS that swapped: state must be a; := b
T_CAS_NO = 5  # OK CAS that did not swap, reported nothing: state != a
T_CAS_NO_SAW = 6  # OK CAS that did not swap and saw b: state == b != a
T_CAS_MAYBE = 7  # unknown CAS: if state == a then := b

ABSENT = 0
UNOBSERVED = 1


class KeyModel:
    """The operations of one key, compiled.

    ``ok_ops`` (OK outcomes) and ``unk_ops`` (UNKNOWN outcomes that could
    change the state; unknown GETs and SCANs are dropped because they can
    neither constrain nor affect anything) are sorted by invocation; every
    other list is indexed in parallel with one of them.  FAIL operations
    must already have been removed.  ``key`` is the key checked; an OK SCAN
    given here reads it (its row for ``key``, or absent).
    """

    def __init__(self, ops: Sequence[Operation], key: bytes | None = None) -> None:
        self.key = key
        ok_ops = [o for o in ops if o.outcome is Outcome.OK]
        unk_ops = [
            o
            for o in ops
            if o.outcome is Outcome.UNKNOWN and o.kind not in (OpKind.GET, OpKind.SCAN)
        ]
        self.ok_ops = sorted(ok_ops, key=lambda o: o.invoke)
        self.unk_ops = sorted(unk_ops, key=lambda o: o.invoke)
        self._intern()

    def _intern(self) -> None:  # noqa: C901, PLR0912, PLR0915 -- one pass mapping every observed value of every op kind to a small integer
        observed: set[bytes] = set()
        for o in self.ok_ops:
            if o.kind is OpKind.GET and o.read is not None:
                observed.add(o.read)
            if o.kind is OpKind.SCAN:
                seen = self._scan_read(o)
                if seen is not None:
                    observed.add(seen)
            if o.kind is OpKind.CAS:
                if o.expected is not None:
                    observed.add(o.expected)
                if not o.succeeded and o.read is not None:
                    observed.add(o.read)
        for o in self.unk_ops:
            if o.kind is OpKind.CAS and o.expected is not None:
                observed.add(o.expected)
        ids: dict[bytes, int] = {v: i + 2 for i, v in enumerate(sorted(observed))}
        self.names: list[str] = ["<absent>", "<a value no operation observed>"]
        self.names += [repr(v) for v in sorted(observed)]

        def sid(v: bytes | None, *, write: bool) -> int:
            if v is None:
                return ABSENT
            got = ids.get(v)
            if got is None:
                assert write, "observed values are all interned"
                return UNOBSERVED
            return got

        def compile_op(o: Operation) -> tuple[int, int, int]:
            if o.kind is OpKind.PUT:
                if o.value is None:
                    raise ValueError(f"PUT without a value: {o.describe()}")
                return (T_SET, sid(o.value, write=True), 0)
            if o.outcome is Outcome.UNKNOWN:
                if o.kind is OpKind.DELETE:
                    return (T_SET, ABSENT, 0)
                return (T_CAS_MAYBE, sid(o.expected, write=False), sid(o.value, write=True))
            if o.kind is OpKind.GET:
                return (T_GET, sid(o.read, write=False), 0)
            if o.kind is OpKind.SCAN:
                return (T_GET, sid(self._scan_read(o), write=False), 0)
            if o.kind is OpKind.DELETE:
                return (T_DEL_YES, 0, 0) if o.succeeded else (T_DEL_NO, 0, 0)
            exp = sid(o.expected, write=False)
            if o.succeeded:
                return (T_CAS_YES, exp, sid(o.value, write=True))
            if o.read is None:
                return (T_CAS_NO, exp, 0)
            return (T_CAS_NO_SAW, exp, sid(o.read, write=False))

        ok_code = [compile_op(o) for o in self.ok_ops]
        self.ok_code = [c[0] for c in ok_code]
        self.ok_a = [c[1] for c in ok_code]
        self.ok_b = [c[2] for c in ok_code]
        unk_code = [compile_op(o) for o in self.unk_ops]
        self.unk_code = [c[0] for c in unk_code]
        self.unk_a = [c[1] for c in unk_code]
        self.unk_b = [c[2] for c in unk_code]

        # Unknown ops with the same transition are interchangeable: they form
        # a class, and the search places a class's members in order only.
        classes: dict[tuple[int, int, int], int] = {}
        self.unk_class: list[int] = []
        self.unk_class_rank: list[int] = []
        counts: list[int] = []
        for sig in unk_code:
            cls = classes.setdefault(sig, len(classes))
            if cls == len(counts):
                counts.append(0)
            self.unk_class.append(cls)
            self.unk_class_rank.append(counts[cls])
            counts[cls] += 1
        self.n_classes = len(counts)

        # The state each op needs (consumes) and the state it can create
        # (produces).  Index `len(names)` stands for "none".
        none = len(self.names)
        self.ok_cons = [none] * len(ok_code)
        self.ok_prod = [none] * len(ok_code)
        for i, (code, a, b) in enumerate(ok_code):
            if code in (T_GET, T_CAS_YES):
                self.ok_cons[i] = a
            elif code == T_CAS_NO_SAW:
                self.ok_cons[i] = b
            elif code == T_DEL_NO:
                self.ok_cons[i] = ABSENT
            if code == T_SET:
                self.ok_prod[i] = a
            elif code == T_CAS_YES:
                self.ok_prod[i] = b
            elif code == T_DEL_YES:
                self.ok_prod[i] = ABSENT
        self.unk_prod = [a if code == T_SET else b for code, a, b in unk_code]

    def _scan_read(self, o: Operation) -> bytes | None:
        """What an OK scan saw of this key: its row's value, or absent."""
        return next((v for k, v in o.rows if k == self.key), None)


def step(code: int, a: int, b: int, state: int) -> tuple[bool, int]:
    """Apply one transition: (legal?, next state).  The search inlines this."""
    if code == T_GET:
        return state == a, state
    if code == T_SET:
        return True, a
    if code == T_DEL_YES:
        return state != ABSENT, ABSENT
    if code == T_DEL_NO:
        return state == ABSENT, state
    if code == T_CAS_YES:
        return state == a, b
    if code == T_CAS_NO:
        return state != a, state
    if code == T_CAS_NO_SAW:
        return state == b and state != a, state
    return True, (b if state == a else state)  # T_CAS_MAYBE
