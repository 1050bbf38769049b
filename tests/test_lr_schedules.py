"""Learning-rate schedules with warm-up and the annealing of p (docs/method.md, 'Optimisation')."""

import math

import pytest

from spd.config.schema import LRSchedule
from spd.train.schedules import lr_at_step, pnorm_at_step


def test_constant() -> None:
    assert [lr_at_step(s, 10, 0.5, "constant") for s in range(10)] == [0.5] * 10


def test_linear_decays_by_one_tth_per_step() -> None:
    # factor 1 − t/T with T = 10: 1, 0.9, …, 0.1
    lrs = [lr_at_step(s, 10, 2.0, "linear") for s in range(10)]
    assert lrs == pytest.approx([2.0 * (1 - s / 10) for s in range(10)])


def test_cosine_runs_from_one_to_zero_over_the_optimiser_steps() -> None:
    # cos(π/2 · t/(T − 1)) with T = 11: t = 0 → 1, t = 5 → cos(π/4) = √2/2, t = 10 → 0.
    assert lr_at_step(0, 11, 1.0, "cosine") == pytest.approx(1.0)
    assert lr_at_step(5, 11, 1.0, "cosine") == pytest.approx(math.sqrt(2) / 2)
    assert lr_at_step(10, 11, 1.0, "cosine") == pytest.approx(0.0, abs=1e-12)


def test_exponential_halves_every_half_life() -> None:
    lrs = [lr_at_step(s, 10, 1.0, "exponential", exponential_halflife=2.0) for s in (0, 2, 4, 5)]
    assert lrs == pytest.approx([1.0, 0.5, 0.25, 0.5**2.5])


def test_linear_warmup_then_the_schedule_from_its_start() -> None:
    # 20 % of 10 steps = 2 warm-up steps: lr s/2 → 0, 0.5 (as the original: step 0 has lr 0);
    # then cosine over the 8 left, from 1.
    lrs = [lr_at_step(s, 10, 1.0, "cosine", warmup_pct=0.2) for s in range(10)]
    assert lrs[:3] == pytest.approx([0.0, 0.5, 1.0])
    assert lrs[2 + 4] == pytest.approx(math.cos(math.pi / 2 * 4 / 7))
    assert lrs[9] == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("schedule", ["constant", "linear", "cosine", "exponential"])
def test_lr_is_never_negative_including_the_final_logged_step(schedule: LRSchedule) -> None:
    # optimize() also asks for the lr of step T (logged, no optimiser step).
    steps = 11
    lrs = [lr_at_step(s, steps, 1.0, schedule, 0.1, 3.0) for s in range(steps + 1)]
    assert all(lr >= 0 for lr in lrs), lrs


def test_no_annealing_without_a_final_p() -> None:
    assert {pnorm_at_step(s, 100, 2.0, None, 0.0, 1.0) for s in range(101)} == {2.0}


def test_p_anneals_linearly_between_the_two_fractions() -> None:
    # 2 → 1 between 50 % and 75 % of 100 steps: step 60 is 40 % of the way → 1.6.
    p = [pnorm_at_step(s, 100, 2.0, 1.0, 0.5, 0.75) for s in (0, 50, 60, 70, 75, 100)]
    assert p == pytest.approx([2.0, 2.0, 1.6, 1.2, 1.0, 1.0])


def test_p_jumps_when_start_and_end_coincide() -> None:
    # As the original: p keeps its start value while step/steps < start, so the step exactly at
    # the start fraction already has the final p.
    assert pnorm_at_step(49, 100, 2.0, 0.5, 0.5, 0.5) == 2.0
    assert pnorm_at_step(50, 100, 2.0, 0.5, 0.5, 0.5) == 0.5
    assert pnorm_at_step(51, 100, 2.0, 0.5, 0.5, 0.5) == 0.5
