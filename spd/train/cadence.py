"""When each periodic action of a run happens: train logging, evaluation, figures, checkpoints.

Every rule about "every N steps" lives here, so changing a cadence is one edit.
"""

from dataclasses import dataclass

from spd.config.schema import Config


@dataclass(frozen=True)
class Cadence:
    """The step-indexed schedule of a run of `steps + 1` iterations (the last is only evaluated)."""

    steps: int
    train_log_freq: int
    eval_freq: int
    slow_eval_freq: int
    slow_eval_on_first_step: bool
    save_freq: int | None

    @classmethod
    def from_config(cls, config: Config) -> "Cadence":
        return cls(
            steps=config.steps,
            train_log_freq=config.train_log_freq,
            eval_freq=config.eval_freq,
            slow_eval_freq=config.slow_eval_freq,
            slow_eval_on_first_step=config.slow_eval_on_first_step,
            save_freq=config.save_freq,
        )

    def is_last(self, step: int) -> bool:
        """The final iteration: logged and evaluated, but no optimiser step."""
        return step == self.steps

    def log_due(self, step: int) -> bool:
        return step % self.train_log_freq == 0 or self.is_last(step)

    def slow_eval_due(self, step: int) -> bool:
        """Slow metrics and figures: every `slow_eval_freq` steps (step 0 only if asked)."""
        return step % self.slow_eval_freq == 0 and (step > 0 or self.slow_eval_on_first_step)

    def eval_due(self, step: int) -> bool:
        return step % self.eval_freq == 0 or self.is_last(step) or self.slow_eval_due(step)

    def include_slow(self, step: int) -> bool:
        """Whether an evaluation at `step` also runs the slow metrics and the figures."""
        return self.slow_eval_due(step) or self.is_last(step)

    def checkpoint_due(self, step: int, start_step: int) -> bool:
        """Saved at the start of `step`, before anything of it is drawn; never at the step a run
        (re)started from, whose checkpoint already exists or is the initial state."""
        if step <= start_step:
            return False
        return self.is_last(step) or (self.save_freq is not None and step % self.save_freq == 0)
