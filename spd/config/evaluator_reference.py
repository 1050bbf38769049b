"""The reference text of the registered metrics and figures, as `spd-config fields metrics`
(or `figures`) prints it: each name with its parameters (type and default) and what it does."""

import inspect
import json
import textwrap
from collections.abc import Callable
from typing import Any

from pydantic_core import to_jsonable_python

from spd.config.evaluators import Evaluator, Kind, registry

TypeText = Callable[[Any], str]


def _parameter_text(evaluator: Evaluator, param: str, type_text: str | None) -> str:
    default = inspect.signature(evaluator.fn).parameters[param].default
    shown = f"{param}: {type_text}" if type_text else param
    if default is inspect.Parameter.empty:
        return f"{shown} (required)"
    # JSON, which YAML reads as written in a config's params: null, 0.1, ["linear1"].
    return f"{shown} = {json.dumps(to_jsonable_python(default))}"


def evaluator_reference(kind: Kind, type_text: TypeText) -> str:
    """One paragraph per registered `kind` ("metric" or "figure"): `name(params)`, when it runs,
    and the first paragraph of its docstring. `type_text` renders a parameter's annotation."""
    paragraphs = []
    for name, evaluator in sorted(registry(kind).items()):
        params = ", ".join(
            _parameter_text(
                evaluator,
                p,
                type_text(evaluator.annotations[p]) if p in evaluator.annotations else None,
            )
            for p in evaluator.params
        )
        cadence = "every slow_eval_freq steps" if evaluator.slow else "every eval_freq steps"
        summary = (inspect.getdoc(evaluator.fn) or "").split("\n\n")[0].replace("\n", " ")
        description = textwrap.fill(
            f"({cadence}) {summary}", width=96, initial_indent="    ", subsequent_indent="    "
        )
        paragraphs.append(f"- name: {name}\n  params: {{{params}}}\n{description}")
    return "\n".join(paragraphs) + "\n"
