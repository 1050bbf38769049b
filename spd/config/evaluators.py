"""Registries of named metrics and figures, selected from the config as `{name, params}`.

A metric is a function `fn(ctx: EvalContext, **params) -> dict[str, float]`; a figure is
`fn(ctx: EvalContext, **params) -> dict[str, matplotlib.figure.Figure]`. Register one with
`@register_metric("name")` / `@register_figure("name")` in `spd/eval/metrics.py` / `spd/eval/figures.py`;
`slow=True` runs it every `slow_eval_freq` steps instead of every `eval_freq`.
"""

import importlib
import inspect
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import ConfigDict, TypeAdapter, ValidationError

Kind = Literal["metric", "figure"]


@dataclass(frozen=True)
class Evaluator:
    name: str
    fn: Callable[..., dict[str, Any]]
    slow: bool
    params: tuple[str, ...]
    annotations: dict[str, Any]
    # Parameters without a default: a config must give them (e.g. the layer a metric scores).
    required: tuple[str, ...] = ()


_REGISTRIES: dict[Kind, dict[str, Evaluator]] = {"metric": {}, "figure": {}}

# Modules whose import registers evaluators; experiment-specific figures live with their
# experiment but must be known whenever a config is validated.
BUILTIN_MODULES = (
    "spd.eval.metrics",
    "spd.eval.figures",
    "spd.eval.lm_metrics",
    "spd.eval.pgd_metrics",
    "spd.eval.group_ce_kl",
    "spd.eval.group_ci_l0",
    "spd.experiments.resid_mlp.plots",
)


def _register(
    kind: Kind, name: str, slow: bool
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        if name in _REGISTRIES[kind]:
            raise ValueError(f"{kind} '{name}' is registered twice")
        signature = inspect.signature(fn).parameters
        params = tuple(signature)[1:]  # first one is the EvalContext
        annotations = {
            p: signature[p].annotation
            for p in params
            if signature[p].annotation is not inspect.Parameter.empty
        }
        required = tuple(p for p in params if signature[p].default is inspect.Parameter.empty)
        _REGISTRIES[kind][name] = Evaluator(name, fn, slow, params, annotations, required)
        return fn

    return decorate


def register_metric(
    name: str, slow: bool = False
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    return _register("metric", name, slow)


def register_figure(
    name: str, slow: bool = True
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    return _register("figure", name, slow)


def registry(kind: Kind) -> dict[str, Evaluator]:
    """All registered evaluators of a kind (importing the built-in ones first)."""
    for module in BUILTIN_MODULES:
        importlib.import_module(module)  # importing registers the built-ins
    return _REGISTRIES[kind]


def validate_specs(specs: Iterable[tuple[str, Mapping[str, Any]]], kind: Kind) -> None:
    """Raise ValueError for an unknown `(name, params)` or a parameter the evaluator does not take."""
    known = registry(kind)
    for name, params in specs:
        if name not in known:
            raise ValueError(f"unknown {kind} '{name}'; available: {', '.join(sorted(known))}")
        accepted = known[name].params
        extra = sorted(set(params) - set(accepted))
        if extra:
            raise ValueError(
                f"{kind} '{name}' takes no parameter {', '.join(repr(e) for e in extra)}; "
                f"it takes: {', '.join(accepted) or 'none'}"
            )
        missing = [p for p in known[name].required if p not in params]
        if missing:
            raise ValueError(
                f"{kind} '{name}' needs parameter {', '.join(repr(m) for m in missing)} "
                f"(e.g. params: {{{missing[0]}: ...}})"
            )
        for param, value in params.items():
            _check_param_type(kind, name, param, value, known[name].annotations.get(param))


def _check_param_type(kind: Kind, name: str, param: str, value: Any, annotation: Any) -> None:
    """Raise ValueError when `value` does not fit the evaluator's annotation of `param` (a float
    must also be finite), so that a wrong parameter fails now, not at the first evaluation."""
    if annotation is None:
        return
    try:
        TypeAdapter(annotation, config=ConfigDict(allow_inf_nan=False)).validate_python(value)
    except ValidationError as err:
        problem = err.errors()[0]["msg"]
        raise ValueError(f"{kind} '{name}': parameter '{param}' = {value!r}: {problem}") from None
