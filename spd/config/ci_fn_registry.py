"""The registry of CI-function types, as the config stage sees them.

A CI-function type is one module under `spd/models/ci_fns/` (`spd.models.ci_fns.base` says what
such a module declares). The config stage needs only two things of a type: its name (the value
of `ci_fn_type`) and the pydantic model its `ci_fn_params` are checked against when a config
loads. It cannot import the models stage, so the built-in types are named by module path below
and imported on the first lookup.

Adding a built-in CI-function type: its module under `spd/models/ci_fns/` and its module path in
`CI_FNS`'s tuple.
"""

from typing import Protocol

from pydantic import BaseModel

from spd.config.plugin_registry import PluginRegistry


class CIFunctionSpec(Protocol):
    """What the config stage needs of a CI-function type."""

    @property
    def name(self) -> str:
        """The type's value of `ci_fn_type`."""
        ...

    @property
    def params_model(self) -> type[BaseModel]:
        """The model `ci_fn_params` is validated against (a `StrictModel`; empty when the type
        has no parameters of its own)."""
        ...


CI_FNS: PluginRegistry[CIFunctionSpec] = PluginRegistry(
    "CI-function type",
    (
        "spd.models.ci_fns.mlp",
        "spd.models.ci_fns.vector_mlp",
        "spd.models.ci_fns.shared_mlp",
        "spd.models.ci_fns.global_shared_mlp",
        "spd.models.ci_fns.global_shared_transformer",
    ),
)
