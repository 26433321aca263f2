"""The decode thread tuner on a simulated 2-core machine: quiet, then shared with a busy program
(2 threads collapse as measured: 14 ms to 465 ms a step, 1 thread stays at 24 ms), then quiet."""

from __future__ import annotations

import pytest

from clm_local.runtime.threads import LAST_RETRY, ThreadTuner, candidate_counts

QUIET = {2: 0.014, 1: 0.024}
BUSY = {2: 0.465, 1: 0.024}


def run(tuner: ThreadTuner, costs: dict[int, float], steps: int, n_tokens: int = 1) -> list[int]:
    """Thread counts used for `steps` steps on a machine where a step with n threads takes costs[n]."""
    used = []
    for _ in range(steps):
        threads = tuner.threads_for(n_tokens)
        tuner.record(n_tokens, threads, costs[threads])
        used.append(threads)
    return used


def test_candidates_are_all_cores_first() -> None:
    assert candidate_counts(8) == (8, 7, 4)
    assert candidate_counts(2) == (2, 1)
    assert candidate_counts(1) == (1,)


def test_a_quiet_machine_keeps_every_core_and_trials_cost_little() -> None:
    tuner = ThreadTuner((2, 1))
    used = run(tuner, QUIET, 5000)
    assert tuner.current == 2
    trial_time = used.count(1) * (QUIET[1] - QUIET[2])
    assert trial_time < 0.01 * 5000 * QUIET[2]  # under 1% of the decoding time


def test_a_busy_core_moves_to_fewer_threads_at_once_and_back_when_quiet() -> None:
    tuner = ThreadTuner((2, 1))
    run(tuner, QUIET, 300)
    busy = run(tuner, BUSY, 2000)
    assert busy[3:].count(2) <= 12  # a few slow trials: backing off 16, 32, ... 1024 steps
    assert sum(BUSY[n] for n in busy) < 2 * 2000 * BUSY[1]  # at least half of the best speed
    quiet_again = run(tuner, QUIET, 2 * LAST_RETRY + 10)
    assert tuner.current == 2 and quiet_again[-LAST_RETRY:].count(2) > LAST_RETRY // 2


def test_steps_of_different_sizes_are_compared_with_their_own_kind() -> None:
    """A 1-token step is not compared with a 12-token one: the bigger step is not a slowdown."""
    tuner = ThreadTuner((2, 1))
    for _ in range(200):
        for n_tokens, scale in ((1, 1.0), (12, 3.0)):
            threads = tuner.threads_for(n_tokens)
            tuner.record(n_tokens, threads, QUIET[threads] * scale)
    assert tuner.current == 2


def test_prompt_reading_uses_the_chosen_count_and_teaches_nothing() -> None:
    tuner = ThreadTuner((2, 1))
    run(tuner, QUIET, 50)
    run(tuner, BUSY, 50)
    assert tuner.current == 1
    assert tuner.threads_for(512) == 1
    tuner.record(512, 1, 100.0)  # a long prompt's time is not a step time
    assert tuner.current == 1


def test_a_fixed_count_is_never_changed() -> None:
    tuner = ThreadTuner((2,))
    assert set(run(tuner, BUSY, 100)) == {2}


def test_thread_counts_must_be_positive() -> None:
    with pytest.raises(ValueError):
        ThreadTuner((0,))
