"""One process of the data-parallel tests: run alone, or as one rank under torchrun.

    python dp_worker.py OUT_DIR MODE        # MODE: exact | stochastic | options | routed | global

Decomposes the shipped tms_5-2 target through `run_decomposition` in float64 (so that summing a
batch in two halves or at once agrees to ~1e-15), on data this script controls: every step has one
global batch drawn from a fixed seed. In `exact` mode each rank takes its slice of that batch and
no loss term draws random masks; in `stochastic` mode every rank takes the whole batch and the
stochastic reconstruction term is on, so the ranks differ only in the masks they draw. `options` is `exact` with the 2026 training
options on (importance minimality's frequency term, the faithfulness warm-up, both gradient clips)
on global batches whose second half repeats the first: each rank's S_c is then exactly half the
global one, so world_size · S_c is the one-process sum and two ranks must match one. `routed` is
`exact` with the delta component and the subset terms on (`stochastic_recon_subset`,
`ci_masked_recon_subset`, `stochastic_recon_layerwise`): their random draws (masks, delta masks,
routes) are replaced by functions of each row's CI, so a row gets the same draws whichever rank
holds it and two ranks must match one; what is tested is how the terms' per-row values are
summed, scaled and reduced across ranks, not the draws. `global` is `exact` with the
`global_shared_transformer` CI function (one function over both layers' inputs). Each rank
saves its final trained parameters and the first masks it drew to OUT_DIR/rank<r>.pt.
"""

import sys
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import Tensor, nn

from spd.config.loading import config_from_dict
from spd.config.schema import Config, Sampling
from spd.experiments.run_decomposition import run_decomposition
from spd.loading.run_paths import REPO_ROOT
from spd.losses import term as loss_term
from spd.losses.routing import RouterParams
from spd.losses.terms import ci_masked_recon_subset, stochastic_recon_subset
from spd.train import distributed
from spd.train.data_shard import DataShard

GLOBAL_BATCH = 64
N_FEATURES = 5


def global_batches(seed: int, sliced: bool, mirrored: bool = False) -> Iterator[Tensor]:
    """The same global batches on every rank; with `sliced`, this rank's contiguous share; with
    `mirrored`, each global batch's second half a copy of its first."""
    generator = torch.Generator().manual_seed(seed)
    rank = distributed.rank_info()
    share = GLOBAL_BATCH // rank.world_size if sliced else GLOBAL_BATCH
    start = rank.rank * share if sliced else 0
    while True:
        values = torch.rand(GLOBAL_BATCH, N_FEATURES, generator=generator)
        active = torch.rand(GLOBAL_BATCH, N_FEATURES, generator=generator) < 0.3
        batch = values * active
        if mirrored:
            batch = batch[: GLOBAL_BATCH // 2].repeat(2, 1)
        yield batch[start : start + share]


# The 2026 training options of `options` mode: bounds well below the gradients' norms, so both
# clips act on every step.
OPTIONS = {
    "faithfulness_warmup_steps": 3,
    "faithfulness_warmup_lr": 1e-2,
    "grad_clip_norm_components": 1e-3,
    "grad_clip_norm_ci_fns": 1e-3,
}


# The subset terms of `routed` mode, on top of `exact`'s.
ROUTED_LOSSES = [
    {"name": "stochastic_recon_layerwise", "coeff": 1.0},
    {"name": "stochastic_recon_subset", "coeff": 1.0, "params": {"router": {"type": "uniform_k_subset"}}},
    {"name": "ci_masked_recon_subset", "coeff": 1.0, "params": {"router": {"type": "static_probability", "p": 0.5}}},
]  # fmt: skip


def row_uniforms(values: Tensor, salt: float) -> Tensor:
    """Numbers in [0, 1) that depend only on `values` (elementwise): a stand-in for U(0, 1) draws
    that gives a row the same draws on any rank."""
    return torch.frac(torch.sin(values.detach() * 7.0 + salt).abs() * 3.0)


def row_stochastic_masks(ci: dict[str, Tensor], sampling: Sampling) -> dict[str, Tensor]:
    return {name: g + (1 - g) * row_uniforms(g, 1.0) for name, g in ci.items()}


def row_delta_masks(ci: dict[str, Tensor], sampling: Sampling) -> dict[str, Tensor]:
    return {name: row_uniforms(g.sum(-1), 2.0) for name, g in ci.items()}


def row_routes(router: RouterParams, ci: dict[str, Tensor]) -> dict[str, Tensor]:
    # Each module is routed in by its own function of the row's CI, whatever the router's type
    # (routed mode's subset terms use routers that draw).
    return {name: row_uniforms(g.sum(-1), 3.0 + i) < 0.5 for i, (name, g) in enumerate(ci.items())}


def make_config(out_dir: Path, mode: str) -> Config:
    importance = {"pnorm": 2.0, "beta": 0.1} if mode == "options" else {}
    options = OPTIONS if mode == "options" else {}
    if mode == "routed":
        options = {"use_delta_component": True}
    if mode == "global":
        options = {"ci_fn_type": "global_shared_transformer", "ci_fn_params": {"d_model": 8}}
    return config_from_dict(
        {
            **options,
            "seed": 0,
            "device": "cpu",
            "run_name": mode,
            "out_dir": str(out_dir / "runs"),
            "C": 8,
            "target_module_patterns": ["linear1", "linear2"],
            "losses": [
                {"name": "faithfulness", "coeff": 1.0},
                {"name": "recon", "coeff": 1.0},
                {"name": "stochastic_recon", "coeff": 1.0 if mode == "stochastic" else None},
                {"name": "importance_minimality", "coeff": 1e-2, "params": importance},
                *(ROUTED_LOSSES if mode == "routed" else []),
            ],
            "lr": 1e-2,
            "steps": 4,
            "batch_size": GLOBAL_BATCH,
            "eval_batch_size": GLOBAL_BATCH,
            "train_log_freq": 1,
            "eval_freq": 2,
            "slow_eval_on_first_step": False,
            "figures": [],
            "pretrained_model_class": "spd.experiments.tms.models.TMSModel",
            "pretrained_model_path": str(REPO_ROOT / "spd/experiments/tms/targets/tms_5-2"),
            "task_config": {"task_name": "tms"},
        }
    )


def main() -> None:
    out_dir, mode = Path(sys.argv[1]), sys.argv[2]
    torch.set_default_dtype(torch.float64)
    first_masks: list[dict[str, Tensor]] = []
    draw_masks = loss_term.stochastic_masks

    def recording_masks(ci: dict[str, Tensor], sampling: Sampling) -> dict[str, Tensor]:
        masks = draw_masks(ci, sampling)
        if not first_masks:
            first_masks.append({name: m.detach().clone() for name, m in masks.items()})
        return masks

    # draw_stochastic_masks looks it up in its module at call time
    loss_term.stochastic_masks = recording_masks
    if mode == "routed":
        loss_term.stochastic_masks = row_stochastic_masks
        loss_term.delta_masks = row_delta_masks
        stochastic_recon_subset.draw_routes = row_routes
        ci_masked_recon_subset.draw_routes = row_routes

    def make_data(
        config: Config, target: nn.Module, device: torch.device, shard: DataShard
    ) -> tuple[Iterator[Tensor], Iterator[Tensor]]:
        sliced, mirrored = mode in ("exact", "options", "routed", "global"), mode == "options"
        return global_batches(1, sliced, mirrored), global_batches(2, sliced, mirrored)

    rank = distributed.rank_info()
    run = run_decomposition(
        make_config(out_dir, mode), "dp_test", make_data, lambda _: {}, show_progress=False
    )
    torch.save(
        {
            "state": run.result.model.decomposition_state(),
            "masks": first_masks,
            "world_size": rank.world_size,
        },
        out_dir / f"rank{rank.rank}.pt",
    )


if __name__ == "__main__":
    main()
