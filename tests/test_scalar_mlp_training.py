"""`optimize()` with the CI functions' blocked kernel (`spd.models.scalar_mlp`) against plain
autograd: the same logged losses and the same parameters after several steps."""

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from spd.config.loading import load_config
from spd.experiments.tms.task import make_data
from spd.loading.targets import load_target_model
from spd.models import scalar_mlp as scalar_mlp_module
from spd.models.ci_fns import mlp as mlp_ci_fn_module
from tests.logged_runs import LOG_EVERY_STEP, logged_run
from tests.paths import REPO_ROOT

TMS_40_10_CONFIG = REPO_ROOT / "spd" / "experiments" / "tms" / "tms_40_10_config.yaml"


def _plain_scalar_mlp(x: Tensor, w1: Tensor, b1: Tensor, w2: Tensor, b2: Tensor) -> Tensor:
    """The CI functions written out for autograd, without the fused kernel."""
    return (w2 * F.gelu(x[..., None] * w1 + b1)).sum(-1) + b2


def _train(
    monkeypatch: pytest.MonkeyPatch, plain: bool
) -> tuple[list[dict[str, float]], dict[str, Tensor]]:
    """The logged training rows and the final parameters of 12 steps on tms_40-10 (C = 24)."""
    overrides = {"C": 24, "steps": 12, "batch_size": 256, **LOG_EVERY_STEP}
    config = load_config(TMS_40_10_CONFIG, overrides)
    with monkeypatch.context() as patch:
        if plain:
            patch.setattr(mlp_ci_fn_module, "scalar_mlp", _plain_scalar_mlp)
        return logged_run(load_target_model(config), config, make_data)


@pytest.mark.parametrize("keep_hidden", [True, False], ids=["kept", "recomputed"])
def test_optimize_with_the_blocked_kernel_equals_plain_autograd(
    keep_hidden: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    plain_rows, plain_params = _train(monkeypatch, plain=True)
    # 256 rows × hidden 16 per subcomponent: blocks of 5 of the 24 subcomponents (the last short).
    per_thread = 5 * 256 * 16 // torch.get_num_threads()
    monkeypatch.setattr(scalar_mlp_module, "CPU_BLOCK_ELEMENTS", per_thread)
    monkeypatch.setattr(scalar_mlp_module, "KEEP_HIDDEN_MAX", 2**30 if keep_hidden else 0)
    blocked_rows, blocked_params = _train(monkeypatch, plain=False)
    assert [r["step"] for r in blocked_rows] == list(range(13))
    for plain, blocked in zip(plain_rows, blocked_rows, strict=True):
        losses = [k for k in plain if k.startswith("train/loss/")]
        assert "train/loss/importance_minimality" in losses
        for key in losses:
            assert blocked[key] == pytest.approx(plain[key], rel=1e-4, abs=1e-7), key
    for name, value in plain_params.items():
        torch.testing.assert_close(blocked_params[name], value, rtol=1e-3, atol=1e-5)
