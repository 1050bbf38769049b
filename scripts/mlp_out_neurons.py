"""Relate a residual-MLP decomposition's mlp_out subcomponents to the target's neurons.

    python scripts/mlp_out_neurons.py <run directory or checkpoint of a resid_mlp run>

For the one-hot inputs (value 0.75) of every feature, it prints, per decomposed mlp_out layer:
how many features switch each neuron on; for each live subcomponent, the neuron it reads (if
its read vector lies along one) and on how many features it is causally important (CI > 0.5);
how often it is important while its neuron is off; and how well the size of the neuron's
effect on the output separates the features where the subcomponent is important from the rest.
It also prints the target's neuron counts for the negative one-hot inputs (value −0.75).
"""

import argparse

import torch
from torch import Tensor

from spd.eval.ci_patterns import live_columns, nearest_axes
from spd.experiments.resid_mlp.models import ResidMLP
from spd.experiments.resid_mlp.scores import CI_OFF, CI_ON, ONE_HOT_VALUE
from spd.models.component_model import ComponentModel

EFFECT_THRESHOLDS = (0.01, 0.03, 0.05, 0.08)


def _summary(values: Tensor) -> str:
    return f"min {values.min():.0f}, median {values.median():.0f}, max {values.max():.0f}"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("path", help="a resid_mlp run directory or a checkpoint inside one")
    args = parser.parse_args()
    model = ComponentModel.from_pretrained(args.path)
    target = model.target
    assert isinstance(target, ResidMLP), "not a residual-MLP decomposition"
    n_features = target.config.n_features
    with torch.no_grad():
        _, pre_acts = model.forward_with_pre_acts(torch.eye(n_features) * ONE_HOT_VALUE)
        _, negative = model.forward_with_pre_acts(-torch.eye(n_features) * ONE_HOT_VALUE)
        ci, _ = model.causal_importances(pre_acts, "leaky_hard")
    for name in model.module_names:
        if not name.endswith("mlp_out"):
            continue
        acts = pre_acts[name]  # (features, neurons): the neurons' activations
        on = acts > 0
        print(f"{name}: {acts.shape[1]} neurons")
        print(f"  features switching a neuron on at +{ONE_HOT_VALUE}: {_summary(on.sum(0))}")
        print(f"  neurons on per feature at +{ONE_HOT_VALUE}: {_summary(on.sum(1))}")
        print(
            f"  neurons on per feature at -{ONE_HOT_VALUE}: {_summary((negative[name] > 0).sum(1))}"
        )
        g = ci[name]
        V = model.components[name].V.detach()  # (neurons, C)
        readout = target.W_E @ model.target_weight(name)  # (features, neurons)
        live = live_columns(g, CI_OFF).nonzero().squeeze(-1)
        cos, neuron = nearest_axes(V)
        aligned = [c for c in live.tolist() if cos[c] >= 0.99]
        print(
            f"  live subcomponents: {live.numel()}, reading one neuron (|cos| >= 0.99): {len(aligned)}"
        )
        if not aligned:
            continue
        important = torch.stack([g[:, c] > CI_ON for c in aligned], 1)  # (features, aligned)
        neuron_on = torch.stack([on[:, neuron[c]] for c in aligned], 1)
        # The norm of the neuron's contribution to the read-off output, per feature.
        effect = torch.stack(
            [
                (acts[:, neuron[c], None] * readout[None, :, neuron[c]]).norm(dim=-1)
                for c in aligned
            ],
            1,
        )
        print(f"  features on which each is important: {_summary(important.sum(0))}")
        print(f"  important while its neuron is off: {int((important & ~neuron_on).sum())} pairs")
        for t in EFFECT_THRESHOLDS:
            predicted = effect > t
            agree = float((predicted == important).float().mean())
            print(
                f"  effect > {t}: agrees with CI > {CI_ON} on {agree:.1%} of (feature, subcomponent) pairs"
            )


if __name__ == "__main__":
    main()
