"""`compile: on | off | auto` (spd/train/compilation.py): a compiled run is the eager run to
rounding, a run where compilation cannot work falls back with one line, and `off` compiles
nothing."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import Tensor
from torch._dynamo.utils import counters

from spd.config.loading import load_config
from spd.config.schema import Config
from spd.train.compile_choice import MEASURED, compile_wanted
from spd.train.optimize import optimize
from spd.train.setup import trainable_parameters
from tests.fixture_types import ConfigFactory, TargetFactory
from tests.paths import REPO_ROOT, TMS_5_2_CONFIG

STEPS = 6


class _LossLog:
    def __init__(self) -> None:
        self.losses: list[float] = []

    def log_metrics(self, step: int, metrics: dict[str, float]) -> None:
        if "train/loss/total" in metrics:
            self.losses.append(metrics["train/loss/total"])

    def save_figure(self, step: int, name: str, figure: object) -> None:
        pass


def _sparse_batches(n: int, device: torch.device) -> list[Tensor]:
    """tms_5-2-like inputs: most rows all zero, so the CPU row selection cuts every batch, to a
    different number of rows each time."""
    gen = torch.Generator().manual_seed(0)
    batches = []
    for _ in range(n):
        x = torch.rand(64, 5, generator=gen)
        x[torch.rand(64, 5, generator=gen) > 0.05] = 0
        batches.append(x.to(device))
    return batches


def _run(
    config: Config, target: torch.nn.Module, device: torch.device
) -> tuple[list[float], list[Tensor]]:
    log = _LossLog()
    batches = _sparse_batches(config.steps + 1, device)
    result = optimize(
        target.to(device),
        config,
        device,
        iter(batches),
        iter(batches * 4),
        sinks=[log],
        show_progress=False,
    )
    return log.losses, [p.detach().cpu().clone() for p in trainable_parameters(result.model)]


def _config(quick_tms_config: ConfigFactory, mode: str) -> Config:
    return quick_tms_config(
        steps=STEPS, train_log_freq=1, eval_freq=100, slow_eval_freq=100, compile=mode
    )


@pytest.mark.slow  # compilation takes 20 s to minutes on the 2-core CI machine
def test_compiled_run_equals_the_eager_run(
    quick_tms_config: ConfigFactory, tms_target: TargetFactory, device: torch.device
) -> None:
    eager_losses, eager_params = _run(_config(quick_tms_config, "off"), tms_target(), device)
    losses, params = _run(_config(quick_tms_config, "on"), tms_target(), device)
    assert len(losses) == STEPS + 1
    assert losses == pytest.approx(eager_losses, rel=1e-5)
    for a, b in zip(params, eager_params, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


# The run the fallback test starts in a fresh process, with compilation made impossible.
_FALLBACK_SCRIPT = """
import torch
from spd.config.loading import load_config
from tests.conftest import QUICK_OVERRIDES
from tests.paths import TMS_5_2_CONFIG, TMS_TARGETS
from tests.test_compilation import STEPS, _run
from spd.experiments.tms.models import TMSModel

config = load_config(TMS_5_2_CONFIG, {**QUICK_OVERRIDES, "steps": STEPS, "train_log_freq": 1,
    "eval_freq": 100, "slow_eval_freq": 100, "compile": "on"})
losses, _ = _run(config, TMSModel.from_pretrained(TMS_TARGETS / "tms_5-2"), torch.device("cpu"))
print("losses", *(repr(loss) for loss in losses))
"""


def test_without_a_cxx_compiler_compile_on_falls_back_with_one_line(
    quick_tms_config: ConfigFactory, tms_target: TargetFactory, tmp_path: Path
) -> None:
    # A real missing compiler: inductor builds its CPU kernels with $CXX. Its caches are off, so
    # no kernel built by an earlier run can stand in for the build.
    env = {
        **os.environ,
        "CXX": str(tmp_path / "no-such-c++"),
        "TORCHINDUCTOR_FORCE_DISABLE_CACHES": "1",
        "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "inductor"),
        "SPD_OUT_DIR": str(tmp_path / "out"),
    }
    proc = subprocess.run(
        [sys.executable, "-c", _FALLBACK_SCRIPT],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    output = proc.stdout + proc.stderr
    notes = [line for line in output.splitlines() if line.startswith("spd: compile:")]
    assert len(notes) == 1, output
    assert "compilation is not available" in notes[0] and "compile: off" in notes[0]
    assert "Traceback" not in output
    # The run went on eagerly, exactly as an eager run does (same masks, same losses).
    fallback = [float(v) for v in proc.stdout.split("losses", 1)[1].split()]
    eager, _ = _run(_config(quick_tms_config, "off"), tms_target(), torch.device("cpu"))
    assert fallback == eager


@pytest.mark.parametrize("mode", ["off", "auto"])
def test_no_compilation_when_off_or_auto_on_the_cpu(
    quick_tms_config: ConfigFactory, tms_target: TargetFactory, mode: str
) -> None:
    torch._dynamo.reset()  # a graph compiled by an earlier test would be reused, not counted
    before = counters["stats"]["unique_graphs"]
    losses, _ = _run(_config(quick_tms_config, mode), tms_target(), torch.device("cpu"))
    assert len(losses) == STEPS + 1
    assert counters["stats"]["unique_graphs"] == before


def test_auto_compiles_only_where_a_measured_case_repays_the_compile_time(
    quick_tms_config: ConfigFactory,
) -> None:
    (tms,) = [m for m in MEASURED if m.model_class.endswith("TMSModel") and m.C == 20]
    # The shipped tms_5-2 config (40 000 steps at batch 4096): the saved time exceeds the compile.
    full = load_config(TMS_5_2_CONFIG)
    assert full.steps * tms.eager_step_s * (1 - 1 / tms.speedup) > tms.compile_s
    assert compile_wanted(full, "cpu")
    assert not compile_wanted(full, "cuda"), "no CUDA measurement: eager"
    # Too few steps to repay the compilation, another batch size (a case not measured), or off.
    breakeven = int(tms.compile_s / (tms.eager_step_s * (1 - 1 / tms.speedup)))
    assert not compile_wanted(full.model_copy(update={"steps": breakeven}), "cpu")
    assert compile_wanted(full.model_copy(update={"steps": breakeven + 1}), "cpu")
    assert not compile_wanted(full.model_copy(update={"batch_size": 1024}), "cpu")
    assert not compile_wanted(full.model_copy(update={"compile": "off"}), "cpu")
    # What the tests run (few steps, small batches) never compiles under auto; `on` always does.
    assert not compile_wanted(quick_tms_config(), "cpu")
    assert compile_wanted(quick_tms_config(compile="on"), "cuda")
