"""Whether a run compiles its training step: `compile: on | off`, or `auto` from measurements.

`auto` compiles only where a measurement of the same case (device type, target class, C and batch
size) shows that the run's steps repay the compile time: with eager step time t, compiled speedup
s and cold compile time T, compiling pays when steps · t · (1 − 1/s) > T. A case nobody measured
trains eagerly, so a new target or device never waits for a compilation that may not pay. The
figures come from docs/benchmarks.md, "Compilation"; a new measurement is one `MEASURED` entry.
"""

from dataclasses import dataclass

from spd.config.schema import Config


@dataclass(frozen=True)
class CompileMeasurement:
    """Compiled against eager training steps of one case, measured on one machine."""

    device_type: str  # "cpu" or "cuda"
    model_class: str  # `pretrained_model_class`
    C: int
    batch_size: int
    compile_s: float  # the first compiled step from a cold inductor cache, less an eager step
    eager_step_s: float  # seconds per eager training step, evaluation excluded
    speedup: float  # eager step time over compiled step time, after compilation

    def pays(self, steps: int) -> bool:
        """Whether `steps` compiled steps save more time than the compilation costs."""
        return steps * self.eager_step_s * (1 - 1 / self.speedup) > self.compile_s

    def matches(self, config: Config, device_type: str) -> bool:
        """Whether this measurement is of `config`'s case on `device_type`."""
        # A per-module C (a list of pairs) is a case nobody measured: it matches none.
        case = (config.pretrained_model_class, config.C, config.batch_size)
        return device_type == self.device_type and case == (
            self.model_class,
            self.C,
            self.batch_size,
        )


# docs/benchmarks.md, "Compilation" (2-core project CPU; the shipped configs' batch sizes). Not
# listed, so eager under `auto`: resid_mlp1 (0.18× from a cold cache, recompiling inside the
# measured window), tms_40-10 (compiled no faster), CUDA (never measured).
MEASURED: tuple[CompileMeasurement, ...] = (
    # tms_5-2: 1.2× after a 33 s cold compile (issue 23), 141 eager steps/s idle at 2 threads;
    # pays from about 28 000 steps, so its full run (40 000) compiles.
    CompileMeasurement("cpu", "spd.experiments.tms.models.TMSModel", 20, 4096, 33.0, 0.0071, 1.2),
)


def compile_wanted(config: Config, device_type: str) -> bool:
    """Whether `config`'s run on `device_type` compiles: `on` and `off` as they say; `auto` only
    where a `MEASURED` case repays its compilation within `config.steps`."""
    if config.compile != "auto":
        return config.compile == "on"
    return any(m.matches(config, device_type) and m.pays(config.steps) for m in MEASURED)
