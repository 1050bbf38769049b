"""A starter decomposition config for a model of your own (`spd-config starter`).

The model is a class named by import path with its checkpoint (`from_pretrained(path)`, the
`generic` task) or a Hugging Face causal-LM directory (the `lm` task). `load_model` builds it;
`spd.models.decomposable` lists what it can decompose; `starter_yaml` writes a commented config
for the chosen patterns: C, the CI function and the recipe's defaults (docs/method.md), and a
task block whose data settings are placeholders to fill in.

Every config key this module writes is spelled in `_sections`, and nowhere else.
"""

import fnmatch
import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from torch import nn

from spd.config.loading import config_from_dict
from spd.config.task_registry import TASKS
from spd.errors import SPDUserError
from spd.experiments.tasks import InputSource, TokenSource, get_task
from spd.loading.run_paths import resolve_run_path
from spd.loading.targets import import_class
from spd.models.decomposable import DecomposableModule, decomposable_modules

# C defaults to this many subcomponents per unit of the widest chosen matrix's rank: the toy
# recipes use 4 (tms_5-2: C 20 for 5 features).
C_PER_RANK = 4
# The CI function's hidden width: the recipes' `mlp` CI functions use 16 for toys, LMs less.
CI_HIDDEN = 16


@dataclass(frozen=True)
class LoadedModel:
    """A model to decompose and how a config names it."""

    model: nn.Module
    class_path: str
    checkpoint: str | None  # pretrained_model_path (a class with from_pretrained)
    hf_directory: str | None  # pretrained_model_name_hf (a Hugging Face directory)


def load_model(
    class_path: str | None, checkpoint: str | None, hf_directory: str | None
) -> LoadedModel:
    """The model by class and checkpoint, or from a Hugging Face directory (exactly one way)."""
    if (class_path is None) == (hf_directory is None):
        raise SPDUserError("give --model-class CLASS --checkpoint PATH, or --hf DIR")
    if hf_directory is not None:
        if not Path(hf_directory).is_dir():
            raise SPDUserError(f"--hf {hf_directory} is not a directory")
        transformers = importlib.import_module("transformers")
        model = transformers.AutoModelForCausalLM.from_pretrained(hf_directory)
        cls = type(model)
        return LoadedModel(model, f"{cls.__module__}.{cls.__name__}", None, hf_directory)
    assert class_path is not None
    if checkpoint is None:
        raise SPDUserError("--model-class needs --checkpoint PATH (given to its from_pretrained)")
    cls = import_class(class_path)
    from_pretrained = getattr(cls, "from_pretrained", None)
    if from_pretrained is None:
        raise SPDUserError(f"{class_path} has no classmethod from_pretrained(path)")
    # As a run finds it: as given, else relative to the repository root, or a `wandb:` run.
    path = resolve_run_path(checkpoint)
    if path is None:
        raise SPDUserError(f"--checkpoint {checkpoint} does not exist")
    model = from_pretrained(path)
    if not isinstance(model, nn.Module):
        raise SPDUserError(f"{class_path}.from_pretrained did not return an nn.Module")
    return LoadedModel(model, class_path, checkpoint, None)


def chosen_modules(
    modules: list[DecomposableModule], patterns: list[str]
) -> list[DecomposableModule]:
    """The decomposable modules `patterns` (fnmatch) match; a pattern matching none is an error."""
    for pattern in patterns:
        if not any(fnmatch.fnmatchcase(m.name, pattern) for m in modules):
            names = ", ".join(m.name for m in modules[:40])
            raise SPDUserError(
                f"--patterns '{pattern}' matches no decomposable module; they are: {names}"
            )
    return [m for m in modules if any(fnmatch.fnmatchcase(m.name, p) for p in patterns)]


# One section: a heading comment, then (key, value, comment) lines.
Section = tuple[str, list[tuple[str, Any, str]]]


def _target_entries(loaded: LoadedModel) -> list[tuple[str, Any, str]]:
    """How the config names the model: class and checkpoint, or a Hugging Face directory."""
    entries: list[tuple[str, Any, str]] = [("pretrained_model_class", loaded.class_path, "")]
    if loaded.hf_directory is None:
        return [*entries, ("pretrained_model_path", loaded.checkpoint, "given to from_pretrained")]
    return [
        *entries,
        ("pretrained_model_name_hf", loaded.hf_directory, "a local directory or a hub id"),
        ("pretrained_model_output_attr", "logits", "the output the losses compare"),
    ]


def _task_reading(source: type[TokenSource | InputSource]) -> str:
    """The first built-in task whose inputs are of this kind: token sequences of a dataset (the
    LM task) or whatever a data source yields (the generic task)."""
    return next(n for n in TASKS.names() if isinstance(get_task(n).analysis_source, source))


def _task_block(loaded: LoadedModel) -> dict[str, Any]:
    """The task: text for a Hugging Face LM, else the generic task; FILL_IN marks what to set."""
    if loaded.hf_directory is not None:
        return {
            "task_name": _task_reading(TokenSource),
            "dataset_name": "FILL_IN/dataset",
            "text_column": "text",
            "train_split": "train",
            "eval_split": "test",
            "max_seq_len": 512,
            "tokenizer_name": loaded.hf_directory,
        }
    return {
        "task_name": _task_reading(InputSource),
        "data_source": "FILL_IN.module:make_batches",
        "data_params": {},
        "eval_data_params": None,
    }


def _losses(is_lm: bool) -> list[dict[str, Any]]:
    """The recipe's loss terms: faithfulness (not for an LM, whose embedding rows are many),
    stochastic reconstruction of all and of single layers, importance minimality (tune its
    coefficient)."""
    terms: list[dict[str, Any]] = [] if is_lm else [{"name": "faithfulness", "coeff": 1.0}]
    return [
        *terms,
        {"name": "stochastic_recon", "coeff": 1.0},
        {"name": "stochastic_recon_layerwise", "coeff": 1.0},
        {
            "name": "importance_minimality",
            "coeff": 3.0e-3,
            "params": {"pnorm": 2.0 if is_lm else 1.0},
        },
    ]


def _sections(loaded: LoadedModel, patterns: list[str], C: int) -> list[Section]:
    """The starter config, section by section, every key with the reason for its value."""
    is_lm = loaded.hf_directory is not None
    metrics = [{"name": "ci_l0"}, {"name": "component_activation_density"}]
    metrics += [{"name": "ce_and_kl"}] if is_lm else []
    return [
        (
            "What is decomposed",
            [
                ("seed", 0, ""),
                ("C", C, f"subcomponents per layer: {C_PER_RANK} x the widest matrix's rank"),
                ("target_module_patterns", patterns, "fnmatch over module names"),
                ("ci_fn_type", "mlp", "CI function: one tiny MLP per subcomponent"),
                ("ci_fn_hidden_dims", [CI_HIDDEN], "its hidden width"),
                ("sigmoid_type", "leaky_hard", "the recipe's"),
            ],
        ),
        (
            "Losses (docs/method.md); a term left out is not computed",
            [
                ("losses", _losses(is_lm), "{name, coeff, params}; spd-config fields losses.NAME"),
                ("output_loss_type", "kl" if is_lm else "mse", "kl for logits"),
            ],
        ),
        (
            "Optimisation and evaluation",
            [
                ("lr", 1.0e-3, ""),
                ("lr_schedule", "cosine", ""),
                ("steps", 10000, "try a short run first"),
                ("batch_size", 8 if is_lm else 1024, ""),
                ("train_log_freq", 100, ""),
                ("eval_freq", 1000, ""),
                ("slow_eval_freq", 5000, ""),
                ("eval_batch_size", 8 if is_lm else 1024, ""),
                ("metrics", metrics, "no ground truth for your own model: no recovery scores"),
                ("figures", [{"name": "ci_histograms"}], "spd-config fields figures lists more"),
            ],
        ),
        ("Target", _target_entries(loaded)),
        (
            "Data: fill in the FILL_IN values (docs/own_models.md)",
            [("task_config", _task_block(loaded), "")],
        ),
    ]


def _flow(value: Any) -> str:
    return (
        yaml.safe_dump(value, default_flow_style=True, width=2**31 - 1)
        .strip()
        .removesuffix("...")
        .strip()
    )


def starter_yaml(loaded: LoadedModel, patterns: list[str], C: int | None = None) -> str:
    """The commented starter config for the modules `patterns` choose (C: `C_PER_RANK` x the
    largest rank among them, unless given). It validates as a `Config`."""
    modules = chosen_modules(decomposable_modules(loaded.model), patterns)
    C = C or C_PER_RANK * max(min(m.d_in, m.d_out) for m in modules)
    lines = [
        "# Starter config written by `spd-config starter`; decomposes:",
        *(f"#   {m.name} ({m.kind}, {m.d_in} x {m.d_out})" for m in modules),
    ]
    data: dict[str, Any] = {}
    for heading, entries in _sections(loaded, patterns, C):
        lines += ["", f"# {heading}"]
        for key, value, comment in entries:
            data[key] = value
            if isinstance(value, dict):
                block = yaml.safe_dump({key: value}, sort_keys=False).rstrip()
                lines += block.splitlines()
            else:
                suffix = f"  # {comment}" if comment else ""
                lines.append(f"{key}: {_flow(value)}{suffix}")
    config_from_dict(data, source="the starter config")  # a key renamed in the schema fails here
    return "\n".join(lines) + "\n"
