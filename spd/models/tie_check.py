"""Checking `target_module_patterns`, `C:` and `tied_weights` against a target before anything is
built or written (`check_decomposition`).

A tie makes one decomposed matrix the transpose of another (`Components.tie_to`), so both must be
decomposed (matched by `target_module_patterns`), their (d_in, d_out) shapes must be each
other's transpose and their C the same. Checked on the target's modules alone (a skeleton on the meta device will
do), so a launcher can refuse a bad tie for every run before the first one starts.
"""

from torch import nn

from spd.config.schema import Config
from spd.errors import SPDUserError
from spd.models.component_model import config_module_C


def in_out_shape(module: nn.Module) -> tuple[int, int] | None:
    """(d_in, d_out) of a decomposable layer, in the orientation of `Components`; None otherwise."""
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features
    if isinstance(module, nn.Embedding):
        return module.num_embeddings, module.embedding_dim
    weight = getattr(module, "weight", None)
    if type(module).__name__ == "Conv1D" and weight is not None and weight.dim() == 2:
        return int(weight.shape[0]), int(weight.shape[1])  # GPT-2's Conv1D stores (d_in, d_out)
    return None


def check_decomposition(target: nn.Module, config: Config) -> None:
    """Raise `SPDUserError` (one line) for the first problem of the layers `config` decomposes in
    `target`: a pattern matching nothing decomposable, a module without exactly one C, a bad tie."""
    _check_ties(target, config, config_module_C(target, config))


def _check_ties(target: nn.Module, config: Config, module_C: dict[str, int]) -> None:
    """Raise `SPDUserError` naming `tied_weights` unless every tie joins two decomposed modules
    (the keys of `module_C`) whose matrices are transposes of each other, with the same C."""
    if not config.tied_weights:
        return
    decomposed = set(module_C)
    modules = dict(target.named_modules())
    for source, tied in config.tied_weights:
        for name in (source, tied):
            if name not in decomposed:
                raise SPDUserError(
                    f"tied_weights names '{name}', which is not a decomposed module; add it to "
                    "target_module_patterns or drop the tie"
                )
        shapes = in_out_shape(modules[source]), in_out_shape(modules[tied])
        if shapes[0] is None or shapes[1] is None or shapes[0] != shapes[1][::-1]:
            raise SPDUserError(
                f"tied_weights ['{source}', '{tied}']: their matrices (d_in, d_out) are "
                f"{shapes[0]} and {shapes[1]}, not transposes of each other; tie matrices of "
                "transposed shapes only"
            )
        if module_C[source] != module_C[tied]:
            raise SPDUserError(
                f"tied_weights ['{source}', '{tied}']: C is {module_C[source]} and "
                f"{module_C[tied]}; give tied modules the same C"
            )
