"""CPU against CUDA: the same decomposition gives the same numbers on both devices.

Skipped on machines without a GPU (CI has none). On a GPU machine run these together with the
device-generic tests on the GPU: `pytest --device cuda tests/test_cuda.py tests/test_resume.py …`.
"""

from pathlib import Path

import pytest
import torch

from spd.config.device import resolve_device
from spd.config.loading import load_config
from spd.models.component_model import ComponentModel, build_component_model
from tests.fixture_types import TargetFactory
from tests.paths import TMS_5_2_ID_CONFIG
from tests.tiny_runs import run_tiny_tms

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


def test_device_auto_picks_cuda() -> None:
    assert resolve_device("auto").type == "cuda"


def _forward_all(model: ComponentModel, x: torch.Tensor) -> list[torch.Tensor]:
    """Target output, CI (both sigmoids' outputs) and masked outputs, back on the CPU."""
    with torch.no_grad():
        out, pre_acts = model.forward_with_pre_acts(x)
        ci, ci_upper = model.causal_importances(pre_acts, "leaky_hard")
        masked = model.forward_with_components(x, ci)
        unmasked = model.forward_with_components(x, dict.fromkeys(model.module_names))
        return [t.cpu() for t in (out, *ci.values(), *ci_upper.values(), masked, unmasked)]


def test_component_model_agrees_across_devices(tms_target: TargetFactory) -> None:
    config = load_config(TMS_5_2_ID_CONFIG)
    model = build_component_model(tms_target("tms_5-2-id"), config)
    model.init_components_from_target(config.seed)
    x = torch.rand(512, 5, generator=torch.Generator().manual_seed(0))
    x[x < 0.7] = 0
    on_cpu = _forward_all(model, x)
    on_gpu = _forward_all(model.to(CUDA), x.to(CUDA))
    for a, b in zip(on_cpu, on_gpu, strict=True):
        # Different kernels (GELU, reductions) round differently; measured differences ≈ 3e-6.
        torch.testing.assert_close(b, a, rtol=1e-4, atol=2e-5)


def test_run_on_cuda_loads_back_on_the_cpu(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SPD_OUT_DIR", str(tmp_path))
    run = run_tiny_tms(device="auto")
    model = run.result.model
    assert next(model.parameters()).device.type == "cuda"
    loaded = ComponentModel.from_pretrained(run.path)
    assert next(loaded.parameters()).device == CPU
    x = torch.rand(256, 5, generator=torch.Generator().manual_seed(1))
    x[x < 0.7] = 0
    for a, b in zip(_forward_all(model.to(CPU), x), _forward_all(loaded, x), strict=True):
        assert torch.equal(a, b)
