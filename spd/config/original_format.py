"""Config files of the original SPD implementation, translated key by key into this format.

`translate_original(data)` returns the translated mapping and one note per translated key (the
loader prints each as a warning line); a key of the original format that has no counterpart here
is an `SPDUserError` naming it. Keys both formats share mean the same and pass through unchanged.
docs/original_configs.md lists the mapping key by key, including the keys whose form in the
original we could only assume.

Weight tying is not a key of the original's run configs: it came from the target's own training
config. That needs the target, so it is decided where targets are found
(`spd.loading.original_targets`).
"""

from collections.abc import Callable
from typing import Any

from spd.errors import SPDUserError

# Top-level keys that exist only in the original format (their presence marks a file as such).
ORIGINAL_TOP_KEYS = frozenset({"eval_metrics", "tokenizer_name", "print_freq"})
# task_config keys of the original language-model task.
ORIGINAL_LM_TASK_KEYS = frozenset(
    {"column_name", "train_data_split", "eval_data_split", "is_tokenized"}
)
LM_TASK_RENAMES = {
    "column_name": "text_column",
    "train_data_split": "train_split",
    "eval_data_split": "eval_split",
}


def looks_original(data: dict[str, Any]) -> bool:
    """Whether a config mapping uses keys that only the original format has."""
    task = data.get("task_config")
    task_keys = set(task) if isinstance(task, dict) else set()
    return bool(ORIGINAL_TOP_KEYS & set(data) or ORIGINAL_LM_TASK_KEYS & task_keys)


# --- eval_metrics: [{classname, extra_init_kwargs}] -> metrics / figures: [{name, params}] ---

Spec = dict[str, Any]
MetricTranslation = Callable[[dict[str, Any], str], tuple[str, Spec]]


def _no_kwargs(kind: str, name: str) -> MetricTranslation:
    def translate(kwargs: dict[str, Any], where: str) -> tuple[str, Spec]:
        _reject(kwargs, set(), where)
        return kind, {"name": name}

    return translate


def _reject(kwargs: dict[str, Any], accepted: set[str], where: str) -> None:
    extra = sorted(set(kwargs) - accepted)
    if extra:
        raise SPDUserError(
            f"{where}: extra_init_kwargs '{extra[0]}' has no translation into this format; "
            "remove it or write the metric as metrics: [{name, params}] (docs/original_configs.md)"
        )


def _ci_l0(kwargs: dict[str, Any], where: str) -> tuple[str, Spec]:
    _reject(kwargs, set(), where)
    return "metric", {"name": "ci_l0"}


def _ce_and_kl(kwargs: dict[str, Any], where: str) -> tuple[str, Spec]:
    _reject(kwargs, {"rounding_threshold"}, where)
    params = {"rounding_threshold": kwargs["rounding_threshold"]} if kwargs else {}
    return "metric", {"name": "ce_and_kl", "params": params}


def _identity_ci_error(kwargs: dict[str, Any], where: str) -> tuple[str, Spec]:
    _reject(kwargs, {"identity_ci", "dense_ci"}, where)
    params: dict[str, Any] = {}
    try:
        if kwargs.get("identity_ci"):
            params["identity_layers"] = [entry["layer_pattern"] for entry in kwargs["identity_ci"]]
        if kwargs.get("dense_ci"):
            params["dense_layers"] = {
                entry["layer_pattern"]: entry["k"] for entry in kwargs["dense_ci"]
            }
    except (KeyError, TypeError):
        raise SPDUserError(
            f"{where}: identity_ci entries need 'layer_pattern', dense_ci entries "
            "'layer_pattern' and 'k'"
        ) from None
    return "metric", {"name": "identity_ci_error", "params": params}


def _figure_of_all_layers(name: str) -> MetricTranslation:
    """A plot that took the layer patterns to draw; ours draws every decomposed layer."""

    def translate(kwargs: dict[str, Any], where: str) -> tuple[str, Spec]:
        _reject(kwargs, {"identity_patterns", "dense_patterns"}, where)
        return "figure", {"name": name}

    return translate


def _ci_histograms(kwargs: dict[str, Any], where: str) -> tuple[str, Spec]:
    # The original accumulated its own batches; ours takes the n_eval_steps eval batches.
    _reject(kwargs, {"n_batches_accum"}, where)
    return "figure", {"name": "ci_histograms"}


# Original classname -> translation. docs/original_configs.md marks which names are assumed.
EVAL_METRIC_CLASSES: dict[str, MetricTranslation] = {
    "CI_L0": _ci_l0,
    "CEandKLLosses": _ce_and_kl,
    "ComponentActivationDensity": _no_kwargs("metric", "component_activation_density"),
    "IdentityCIError": _identity_ci_error,
    "CIHistograms": _ci_histograms,
    "PermutedCIPlots": _figure_of_all_layers("permuted_ci"),
    "UVPlots": _figure_of_all_layers("uv_matrices"),
}


def _eval_metrics(entries: Any) -> tuple[list[Spec], list[Spec]]:
    if not isinstance(entries, list):
        raise SPDUserError("eval_metrics must be a list of {classname, extra_init_kwargs}")
    metrics: list[Spec] = []
    figures: list[Spec] = []
    for index, entry in enumerate(entries):
        where = f"eval_metrics[{index}]"
        if not isinstance(entry, dict) or "classname" not in entry:
            raise SPDUserError(f"{where} must be a mapping with a 'classname'")
        unknown = sorted(set(entry) - {"classname", "extra_init_kwargs"})
        if unknown:
            raise SPDUserError(f"{where}: key '{unknown[0]}' has no translation into this format")
        classname = entry["classname"]
        where = f"{where} ({classname})"
        translate = EVAL_METRIC_CLASSES.get(classname)
        if translate is None:
            raise SPDUserError(
                f"{where}: classname '{classname}' has no translation into this format; "
                f"translated: {', '.join(EVAL_METRIC_CLASSES)} (docs/original_configs.md)"
            )
        kwargs = entry.get("extra_init_kwargs") or {}
        if not isinstance(kwargs, dict):
            raise SPDUserError(f"{where}: extra_init_kwargs must be a mapping")
        kind, spec = translate(kwargs, where)
        (metrics if kind == "metric" else figures).append(spec)
    return metrics, figures


def _lm_task(task: dict[str, Any], notes: list[str]) -> dict[str, Any]:
    result = dict(task)
    for old, new in LM_TASK_RENAMES.items():
        if old in result:
            if new in result:
                raise SPDUserError(f"task_config has both '{old}' (original) and '{new}'; keep one")
            result[new] = result.pop(old)
            notes.append(f"task_config.{old} -> task_config.{new}")
    if "is_tokenized" in result:
        if result.pop("is_tokenized"):
            raise SPDUserError(
                "task_config.is_tokenized: true has no translation into this format: the lm task "
                "tokenizes a text column itself; point dataset_name at the text data"
            )
        notes.append("task_config.is_tokenized: false dropped (the lm task tokenizes text)")
    return result


# Task names of the original that differ here (assumed; see docs/original_configs.md).
TASK_RENAMES = {"residual_mlp": "resid_mlp"}


def translate_original(
    data: dict[str, Any], known_keys: frozenset[str] | None = None
) -> tuple[dict[str, Any], list[str]]:
    """The mapping in this project's format, and one note per translated key.

    With `known_keys` (this format's top-level keys), a remaining top-level key that is not one
    of them is reported as an original key without a translation.
    """
    result = dict(data)
    notes: list[str] = []
    if "eval_metrics" in result:
        metrics, figures = _eval_metrics(result.pop("eval_metrics"))
        for key, specs in (("metrics", metrics), ("figures", figures)):
            if key in result:
                raise SPDUserError(f"config has both eval_metrics (original) and {key}; keep one")
            result[key] = specs
        notes.append(
            f"eval_metrics -> metrics: [{', '.join(m['name'] for m in metrics)}], "
            f"figures: [{', '.join(f['name'] for f in figures)}]"
        )
    if "print_freq" in result:
        result.pop("print_freq")
        notes.append("print_freq dropped (console printing only; train_log_freq sets logging)")
    task = result.get("task_config")
    if isinstance(task, dict) and ORIGINAL_LM_TASK_KEYS & set(task):
        task = _lm_task(task, notes)
        result["task_config"] = task
    if "tokenizer_name" in result:
        tokenizer = result.pop("tokenizer_name")
        if not isinstance(task, dict):
            raise SPDUserError("tokenizer_name is given but there is no task_config to move it to")
        if task.get("tokenizer_name", tokenizer) != tokenizer:
            raise SPDUserError("tokenizer_name differs from task_config.tokenizer_name; keep one")
        result["task_config"] = {**task, "tokenizer_name": tokenizer}
        notes.append("tokenizer_name -> task_config.tokenizer_name")
    task = result.get("task_config")
    if isinstance(task, dict) and task.get("task_name") in TASK_RENAMES:
        old = task["task_name"]
        result["task_config"] = {**task, "task_name": TASK_RENAMES[old]}
        notes.append(f"task_config.task_name {old} -> {TASK_RENAMES[old]}")
    if known_keys is not None:
        unknown = sorted(k for k in result if k not in known_keys)
        if unknown:
            raise SPDUserError(
                f"original-format key '{unknown[0]}' has no translation into this format; remove "
                "it or replace it (docs/original_configs.md lists the mapping)"
            )
    return result, notes
