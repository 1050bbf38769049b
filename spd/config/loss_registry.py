"""The loss terms a config may name in `losses:`, and the check of each entry's parameters.

A loss term is one module under `spd/losses/terms/` that declares its name, its parameter block
(a `StrictModel` with a description on every field) and how it is computed, and registers itself
into `LOSS_TERMS` when imported. The config stage cannot import `spd.losses`, so it sees a term
only through `LossTermPlugin` and imports the built-in modules (`LOSS_TERMS.builtin_modules`) on
the first lookup.

The tuple of built-in modules below is the one registration line per term, and it fixes the
order in which the terms are computed, logged and summed (`LossTermRegistry.in_order`): the
stochastic terms draw their masks in that order, so reordering it changes every seeded run.
"""

from collections.abc import Mapping
from typing import Any, Protocol, TypeVar

from pydantic import BaseModel, ValidationError

from spd.config.plugin_registry import PluginRegistry


class LossTermPlugin(Protocol):
    """What the config stage needs of a loss term (`spd.losses.term.LossTerm` is one)."""

    @property
    def name(self) -> str:
        """The term's name in `losses:` and in the `train/loss/<name>` metric."""
        ...

    @property
    def params(self) -> type[BaseModel]:
        """The term's parameter block (a `StrictModel`), checked when a config loads."""
        ...

    @property
    def module(self) -> str:
        """The module that defines the term; its place in `builtin_modules` orders the terms."""
        ...


PluginT = TypeVar("PluginT", bound=LossTermPlugin)


class LossTermRegistry(PluginRegistry[PluginT]):
    """A `PluginRegistry` of loss terms that also knows their order of computation."""

    def in_order(self) -> list[PluginT]:
        """Every term: the built-ins in the order of `builtin_modules`, then any registered by a
        user, in the order they registered (whatever order the modules were imported in)."""
        self._load_builtins()
        rank = {module: index for index, module in enumerate(self.builtin_modules)}
        # sorted is stable: terms outside the tuple keep their registration order, after it.
        return sorted(self._plugins.values(), key=lambda term: rank.get(term.module, len(rank)))


LOSS_TERMS: LossTermRegistry[LossTermPlugin] = LossTermRegistry(
    "loss term",
    (
        "spd.losses.terms.faithfulness",
        "spd.losses.terms.recon",
        "spd.losses.terms.recon_layerwise",
        "spd.losses.terms.stochastic_recon",
        "spd.losses.terms.stochastic_recon_layerwise",
        "spd.losses.terms.embedding_recon",
        "spd.losses.terms.importance_minimality",
        "spd.losses.terms.schatten",
        "spd.losses.terms.out_recon",
        "spd.losses.terms.hidden_act_recon",
        "spd.losses.terms.stochastic_recon_subset",
        "spd.losses.terms.ci_masked_recon_subset",
        "spd.losses.terms.pgd_recon",
        "spd.losses.terms.pgd_recon_subset",
        "spd.losses.terms.pgd_recon_layerwise",
        "spd.losses.terms.persistent_pgd_recon",
        "spd.losses.terms.persistent_pgd_recon_subset",
    ),
)


def validated_params(name: str, params: Mapping[str, Any]) -> BaseModel:
    """The parameter block of loss term `name` validated from `params`; ValueError naming the
    term and the offending key (or listing the known terms) otherwise."""
    term = LOSS_TERMS.get(name)
    try:
        return term.params.model_validate(dict(params))
    except ValidationError as err:
        problem = err.errors()[0]
        key = ".".join(str(p) for p in problem["loc"])
        if problem["type"] == "extra_forbidden":
            accepted = ", ".join(term.params.model_fields) or "none"
            raise ValueError(
                f"loss term '{name}' has no parameter '{key}'; it takes: {accepted}"
            ) from None
        where = f"parameter '{key}'" if problem["loc"] else "params"
        raise ValueError(f"loss term '{name}': {where}: {problem['msg']}") from None
