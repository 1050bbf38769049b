"""The modules of a model that SPD can decompose, with their kind and shape: what a user picks
`target_module_patterns` from (`spd-config starter`)."""

from dataclasses import dataclass

from torch import Tensor, nn

from spd.models.component_model import GPT2_CONV1D


@dataclass(frozen=True)
class DecomposableModule:
    """One decomposable module: its name in the model, its kind, and its matrix `(d_in, d_out)`
    (an embedding's `d_in` is its vocabulary)."""

    name: str
    kind: str
    d_in: int
    d_out: int


def _shape(module: nn.Module) -> tuple[str, int, int] | None:
    if isinstance(module, nn.Linear):
        return "Linear", module.in_features, module.out_features
    if isinstance(module, nn.Embedding):
        return "Embedding", module.num_embeddings, module.embedding_dim
    cls = type(module)
    if f"{cls.__module__}.{cls.__qualname__}" == GPT2_CONV1D:
        weight = module.weight
        assert isinstance(weight, Tensor)
        return "Conv1D", int(weight.shape[0]), int(weight.shape[1])  # stored (d_in, d_out)
    return None


def decomposable_modules(model: nn.Module) -> list[DecomposableModule]:
    """Every module of `model` that `target_module_patterns` may name, in module order."""
    found = []
    for name, module in model.named_modules():
        shape = _shape(module)
        if name and shape is not None:
            found.append(DecomposableModule(name, *shape))
    return found


def module_table(modules: list[DecomposableModule]) -> str:
    """The modules as aligned text lines: name, kind, d_in × d_out."""
    width = max((len(m.name) for m in modules), default=4)
    lines = [f"{'name':<{width}}  kind       d_in x d_out"]
    lines += [f"{m.name:<{width}}  {m.kind:<9}  {m.d_in} x {m.d_out}" for m in modules]
    return "\n".join(lines) + "\n"
