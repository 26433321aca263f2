"""How many CPU threads a decode step uses, chosen by timing the steps themselves.

llama.cpp's CPU threads meet at a spinning barrier after every operation of the graph. On a quiet
machine one thread per core is fastest. When another program takes a core, one of our threads
waits for the scheduler at every barrier while the others spin: measured on a 2-core machine,
2-thread decoding went from 14 ms to 465 ms a token (33x) while 1 thread stayed at 14 ms. A
laptop always runs something else, and how much changes by the minute, so no fixed count is
right; `ThreadTuner` keeps the count that is fastest now:

- it starts with every usable core (the quiet machine's best) and times each small decode call
  (a generation step), per number of tokens in the call;
- now and then it runs one step with another count (fewer threads); if that step is clearly
  faster, the other count takes over. A count that loses is tried again after twice as many
  steps as last time (16 up to 1024), so the trials cost little while nothing changes;
- when the current count's steps get twice as slow as its best, every other count is tried at
  once: that is what a new competing program looks like.

Prompt reading (large calls) uses whatever count the steps chose.
"""

from __future__ import annotations

import os

STEP_TOKENS = 16  # calls with at most this many tokens are generation steps: timed and compared
SWITCH_BELOW = 0.85  # a trial step must take under this share of the current count's time
FIRST_RETRY = 16  # steps until a losing count is tried again, doubling up to LAST_RETRY
LAST_RETRY = 1024
SLOWDOWN = 2.0  # current steps this many times slower than their best: try the others now
SMOOTHING = 0.5  # weight of the newest step in the running time of the current count


def usable_cores() -> int:
    """Cores this process may run on (its affinity mask where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


def candidate_counts(cores: int) -> tuple[int, ...]:
    """Thread counts worth trying, best first on a quiet machine: all cores, one fewer, half."""
    return tuple(dict.fromkeys(n for n in (cores, cores - 1, cores // 2) if n >= 1))


class ThreadTuner:
    """Picks the thread count of each decode call; `record` learns from how long it took."""

    def __init__(self, candidates: tuple[int, ...]) -> None:
        if not candidates or min(candidates) < 1:
            raise ValueError("thread counts must be positive")
        self.candidates = candidates
        self.current = candidates[0]
        self._step = 0
        self._typical: dict[tuple[int, int], float] = {}  # (tokens, threads) -> running seconds
        self._best: dict[tuple[int, int], float] = {}  # (tokens, threads) -> fastest seconds seen
        self._retry_at = {n: FIRST_RETRY for n in candidates}  # step at which n is tried next
        self._retry_gap = {n: FIRST_RETRY for n in candidates}

    def threads_for(self, n_tokens: int) -> int:
        """The thread count for a call of `n_tokens` tokens."""
        if n_tokens > STEP_TOKENS or len(self.candidates) == 1:
            return self.current
        self._step += 1
        if (n_tokens, self.current) not in self._typical:
            return self.current  # nothing to compare a trial with yet
        for count in self.candidates:
            if count != self.current and self._step >= self._retry_at[count]:
                return count
        return self.current

    def record(self, n_tokens: int, threads: int, seconds: float) -> None:
        """Learn from a call that `threads_for(n_tokens)` planned and that took `seconds`."""
        if n_tokens > STEP_TOKENS or len(self.candidates) == 1:
            return
        key = (n_tokens, threads)
        self._best[key] = min(seconds, self._best.get(key, seconds))
        if threads == self.current:
            typical = self._typical.get(key, seconds)
            self._typical[key] = (1 - SMOOTHING) * typical + SMOOTHING * seconds
            if self._typical[key] > SLOWDOWN * self._best[key]:  # something else took our cores
                for count in self.candidates:
                    self._retry_at[count] = min(self._retry_at[count], self._step + 1)
            return
        current_time = self._typical[(n_tokens, self.current)]
        if seconds < SWITCH_BELOW * current_time:
            self._retry_gap[self.current] = FIRST_RETRY
            self._retry_at[self.current] = self._step + FIRST_RETRY
            self.current = threads
            self._typical[key] = seconds
        else:
            self._retry_gap[threads] = min(2 * self._retry_gap[threads], LAST_RETRY)
            self._retry_at[threads] = self._step + self._retry_gap[threads]
