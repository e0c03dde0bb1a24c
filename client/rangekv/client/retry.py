"""What the client retries, and how long it waits first. Pure logic, no I/O.

The one rule: retry only what cannot have been applied, or cannot matter if it was.

- A read (Get, a Batch of Gets, a scan before its first row) has no effect:
  retried after UNAVAILABLE (the gateway could not reach a leaseholder, the
  stream broke), RESOURCE_EXHAUSTED (overload) and ABORTED (a scan's snapshot
  was lost).
- A write is retried only when the answer says it was NOT applied:
  RESOURCE_EXHAUSTED (refused before anything was written), UNAVAILABLE with
  WRITE_OUTCOME_NOT_APPLIED. Never after WRITE_OUTCOME_UNKNOWN (the stream broke
  after it was sent, the gateway gave up while it was in flight): retrying could
  apply it twice, so the caller gets the error and decides.
- Nothing is retried after INVALID_ARGUMENT, PERMISSION_DENIED, UNAUTHENTICATED,
  DEADLINE_EXCEEDED (the caller's time is gone) or INTERNAL.

The wait: the server's RetryInfo when it gave one, else a capped exponential
backoff, either way jittered by x[0.5, 1.5) from a seeded random.Random, and
never past the caller's deadline (then the last error is raised).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from rangekv.common import errors as E


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    #: Attempts per operation, the first included (1: never retry).
    attempts: int = 10
    #: First backoff when the server gave no delay; doubled per attempt.
    backoff_initial: float = 0.01
    #: The longest single wait.
    backoff_max: float = 1.0

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError(f"attempts must be >= 1, got {self.attempts}")
        if not 0 < self.backoff_initial <= self.backoff_max:
            raise ValueError("need 0 < backoff_initial <= backoff_max")

    def retryable(self, exc: E.RangeKVError, write: bool) -> bool:
        """Whether the request that failed with ``exc`` may be sent again."""
        if isinstance(exc, E.ResourceExhausted):
            return not exc.answer_too_large
        if isinstance(exc, E.Unavailable):
            return not write or exc.outcome == E.WriteOutcome.NOT_APPLIED
        if isinstance(exc, E.FenceLost | E.ClockOffset):
            return not write
        return False

    def delay(self, attempt: int, exc: E.RangeKVError, rng: random.Random) -> float:
        """Seconds to wait before attempt ``attempt + 1`` (``attempt`` >= 1 failed)."""
        base = min(self.backoff_max, self.backoff_initial * (2 ** (attempt - 1)))
        hinted = getattr(exc, "retry_after", None)
        if isinstance(hinted, float | int) and hinted > 0:
            base = min(self.backoff_max, max(base, float(hinted)))
        return base * (0.5 + rng.random())


__all__ = ["RetryPolicy"]
