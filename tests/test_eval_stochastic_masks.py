"""The `stochastic` variant of the `ce_and_kl` metric (spd/eval/lm_metrics.py) draws as training
does: the run's `sampling`, and the delta component's mask where it is on; with both off, exactly
the draws and values of before (one U(0, 1) per CI element, m = g + (1 − g) r)."""

import pytest
import torch
from torch import Tensor

from spd.config.schema import Sampling
from spd.eval.lm_metrics import mask_functions
from spd.models.module_mask import ModuleMask

# Two positions, three subcomponents: CI 0, 1/2 and 1.
CI = torch.tensor([[0.0, 0.5, 1.0], [0.25, 0.0, 1.0]])
SEED = 7


def _draw(sampling: Sampling, use_delta: bool) -> tuple[Tensor | ModuleMask | None, Tensor]:
    """The stochastic mask of CI, and the `random` variant drawn right after it."""
    generator = torch.Generator().manual_seed(SEED)
    fns = mask_functions(0.0, generator, sampling, use_delta)
    stochastic = fns["stochastic"](CI)
    random = fns["random"](CI)
    assert isinstance(random, Tensor)
    return stochastic, random


def _reference_draws(*shapes: tuple[int, ...]) -> list[Tensor]:
    generator = torch.Generator().manual_seed(SEED)
    return [torch.rand(shape, generator=generator) for shape in shapes]


def test_continuous_without_delta_draws_exactly_as_before() -> None:
    mask, random = _draw("continuous", use_delta=False)
    r, r_next = _reference_draws((2, 3), (2, 3))
    assert isinstance(mask, Tensor)
    assert torch.equal(mask, CI + (1 - CI) * r)
    # No further draw: the next variant gets the same numbers as before.
    assert torch.equal(random, r_next)
    # By hand at the CI-1 and CI-0 entries: 1, and r itself.
    assert mask[0, 2] == 1.0 and mask[0, 0] == r[0, 0]


def test_binomial_masks_are_the_ci_or_one() -> None:
    mask, _ = _draw("binomial", use_delta=False)
    (r,) = _reference_draws((2, 3))
    assert isinstance(mask, Tensor)
    expected = torch.where(r < 0.5, CI, torch.ones_like(CI))
    assert torch.equal(mask, expected)
    assert bool(((mask == CI) | (mask == 1.0)).all())


@pytest.mark.parametrize("sampling", ["continuous", "binomial"])
def test_the_delta_mask_is_drawn_after_the_component_mask(sampling: Sampling) -> None:
    mask, random = _draw(sampling, use_delta=True)
    r, r_delta, r_next = _reference_draws((2, 3), (2,), (2, 3))
    assert isinstance(mask, ModuleMask)
    component = CI + (1 - CI) * r if sampling == "continuous" else torch.where(r < 0.5, CI, 1.0)
    assert mask.component is not None and torch.equal(mask.component, component)
    # m_Δ: the delta component's CI is 0, so its mask is r itself (or r rounded to {0, 1}).
    delta = r_delta if sampling == "continuous" else (r_delta < 0.5).float()
    assert mask.delta is not None and torch.equal(mask.delta, delta)
    assert mask.route is None
    assert torch.equal(random, r_next)
