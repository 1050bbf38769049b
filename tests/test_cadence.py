"""When a run logs, evaluates, draws figures and checkpoints (`spd.train.cadence`)."""

from spd.train.cadence import Cadence


def cadence(**changes: object) -> Cadence:
    settings: dict[str, object] = {
        "steps": 100,
        "train_log_freq": 10,
        "eval_freq": 25,
        "slow_eval_freq": 50,
        "slow_eval_on_first_step": False,
        "save_freq": 40,
    }
    return Cadence(**{**settings, **changes})  # pyright: ignore[reportArgumentType]


def test_logging_and_evaluation_steps_include_the_last_one() -> None:
    c = cadence(steps=95)
    assert [s for s in range(96) if c.log_due(s)] == [0, 10, 20, 30, 40, 50, 60, 70, 80, 90, 95]
    assert [s for s in range(96) if c.eval_due(s)] == [0, 25, 50, 75, 95]
    assert [s for s in range(96) if c.include_slow(s)] == [50, 95]


def test_slow_evaluation_at_step_zero_only_when_asked() -> None:
    assert not cadence().include_slow(0)
    assert cadence(slow_eval_on_first_step=True).include_slow(0)
    # A slow evaluation is an evaluation even off the eval_freq grid.
    assert cadence(eval_freq=30).eval_due(50)


def test_checkpoints_are_periodic_and_final_but_never_at_the_start_step() -> None:
    c = cadence()
    assert [s for s in range(101) if c.checkpoint_due(s, start_step=0)] == [40, 80, 100]
    assert [s for s in range(40, 101) if c.checkpoint_due(s, start_step=40)] == [80, 100]
    assert [s for s in range(101) if cadence(save_freq=None).checkpoint_due(s, 0)] == [100]
