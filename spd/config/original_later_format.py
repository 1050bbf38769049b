"""Config files of the original SPD implementation's later format, translated key by key.

The original's later configs (its main and development branches, early 2026) name their loss
terms and evaluations as `{classname, ...}` blocks (`spd.config.original_later_blocks`), give C
per module pattern (`module_info`), and write the learning-rate schedule and CI function as
blocks. `translate_later(data)` returns the mapping with those keys in this format, in the
file's order, and one note per translated key (the loader prints each as a warning line). What
remains goes through the earlier format's translation (`spd.config.original_format`), whose check
makes any key neither format translates a one-line error. Keys both formats share pass unchanged.
docs/original_configs.md lists the mapping and marks what we assumed.
"""

import json
from collections.abc import Callable
from typing import Any

from spd.config.ci_fn_registry import CI_FNS
from spd.config.original_later_blocks import translate_eval_blocks, translate_loss_blocks
from spd.errors import SPDUserError

# Keys only the later format has (their presence marks a file as such), besides a block-valued
# `lr_schedule`.
LATER_TOP_KEYS = frozenset(
    {
        "loss_metric_configs",
        "eval_metric_configs",
        "module_info",
        "identity_module_info",
        "ci_config",
        "pretrained_model_name",
    }
)
LR_BLOCK_KEYS = frozenset({"fn_type", "warmup_pct", "final_val_frac", "start_val"})
DECAYING_SCHEDULES = ("linear", "cosine")
CI_CONFIG_KEYS = frozenset({"mode", "fn_type", "hidden_dims"})
MODULE_INFO_KEYS = frozenset({"module_pattern", "C"})

# A key's translation: (the keys it becomes, in place of it; its note, or None for none).
Translated = tuple[dict[str, Any], str | None]
KeyTranslation = Callable[[Any, dict[str, Any]], Translated]


def looks_later(data: dict[str, Any]) -> bool:
    """Whether a config mapping uses keys that only the later original format has."""
    return bool(LATER_TOP_KEYS & set(data)) or isinstance(data.get("lr_schedule"), dict)


def _refuse_both(data: dict[str, Any], original: str, ours: tuple[str, ...]) -> None:
    given = [key for key in ours if key in data]
    if given:
        raise SPDUserError(f"config has both {original} (original) and {given[0]}; keep one")


def _losses(value: Any, data: dict[str, Any]) -> Translated:
    _refuse_both(data, "loss_metric_configs", ("losses",))
    specs = translate_loss_blocks(value, data.get("n_mask_samples"))
    shown = ", ".join(f"{s['name']} {s['coeff']}" for s in specs)
    return {"losses": specs}, f"loss_metric_configs -> losses: [{shown}]"


def _n_mask_samples(value: Any, data: dict[str, Any]) -> Translated:
    if "loss_metric_configs" not in data:  # then it is the flat key of earlier files
        return {"n_mask_samples": value}, None
    specs = translate_loss_blocks(data["loss_metric_configs"], value)
    takers = [s["name"] for s in specs if "n_mask_samples" in s["params"]]
    if not takers:
        return {}, "n_mask_samples dropped: no term in loss_metric_configs draws masks"
    return {}, f"n_mask_samples -> params.n_mask_samples: {value} of {', '.join(takers)}"


def _eval_metrics(value: Any, data: dict[str, Any]) -> Translated:
    _refuse_both(data, "eval_metric_configs", ("metrics", "figures"))
    metrics, figures = translate_eval_blocks(value)
    return {"metrics": metrics, "figures": figures}, (
        f"eval_metric_configs -> metrics: [{', '.join(m['name'] for m in metrics)}], "
        f"figures: [{', '.join(f['name'] for f in figures)}]"
    )


def _module_info(value: Any, data: dict[str, Any]) -> Translated:
    _refuse_both(data, "module_info", ("target_module_patterns", "C"))
    entries = value if isinstance(value, list) else []
    if not entries or not all(isinstance(e, dict) and set(e) == MODULE_INFO_KEYS for e in entries):
        raise SPDUserError("module_info must be a non-empty list of {module_pattern, C}")
    pairs = [(entry["module_pattern"], entry["C"]) for entry in entries]
    patterns = [pattern for pattern, _ in pairs]
    first = pairs[0][1]
    # One C for every pattern is written as the single number, the form of this project's configs.
    same = all(c == first for _, c in pairs)
    C = first if same else [{"module_pattern": p, "C": c} for p, c in pairs]
    return {"target_module_patterns": patterns, "C": C}, (
        f"module_info -> target_module_patterns: {patterns}, C: {C}"
    )


def _identity_module_info(value: Any, data: dict[str, Any]) -> Translated:
    if value:
        raise SPDUserError(
            "identity_module_info: decomposing inserted identity matrices is not supported here "
            "yet; set it to null or remove it"
        )
    return {}, f"identity_module_info: {json.dumps(value)} dropped (no identity matrices inserted)"


def _ci_fn_type(name: Any) -> str:
    if not isinstance(name, str) or name not in CI_FNS:
        raise SPDUserError(
            f"ci_fn_type '{name}' is not supported here yet; use one of "
            f"{', '.join(CI_FNS.names())} (docs/original_configs.md)"
        )
    return name


def _ci_fn_type_key(value: Any, data: dict[str, Any]) -> Translated:
    return {"ci_fn_type": _ci_fn_type(value)}, None


def _ci_config(value: Any, data: dict[str, Any]) -> Translated:
    _refuse_both(data, "ci_config", ("ci_fn_type", "ci_fn_hidden_dims"))
    if not isinstance(value, dict) or set(value) - CI_CONFIG_KEYS or "fn_type" not in value:
        raise SPDUserError(
            f"ci_config must be a mapping of {', '.join(sorted(CI_CONFIG_KEYS))} with fn_type"
        )
    if value.get("mode", "layerwise") != "layerwise":
        raise SPDUserError(
            f"ci_config mode '{value['mode']}' (a global CI function) is not supported here yet; "
            "use mode: layerwise with fn_type mlp or vector_mlp"
        )
    result = {"ci_fn_type": _ci_fn_type(value["fn_type"])}
    if "hidden_dims" in value:
        result["ci_fn_hidden_dims"] = value["hidden_dims"]
    shown = ", ".join(f"{k}: {v}" for k, v in result.items())
    return result, f"ci_config -> {shown}"


def _lr_schedule(value: Any, data: dict[str, Any]) -> Translated:
    if not isinstance(value, dict):  # the earlier, flat form is this project's own
        return {"lr_schedule": value}, None
    unknown = sorted(set(value) - LR_BLOCK_KEYS)
    if unknown or "fn_type" not in value:
        raise SPDUserError(
            f"lr_schedule block: {f'key {unknown[0]!r} is not translated' if unknown else 'no fn_type'}"
            f"; it takes {', '.join(sorted(LR_BLOCK_KEYS))}"
        )
    _refuse_both(data, "an lr_schedule block", ("lr_warmup_pct",))
    fn_type = value["fn_type"]
    if fn_type in DECAYING_SCHEDULES and value.get("final_val_frac", 0.0) != 0.0:
        raise SPDUserError(
            f"lr_schedule.final_val_frac {value['final_val_frac']}: a {fn_type} schedule here "
            "decays to 0; a floor is not supported yet, set final_val_frac: 0.0"
        )
    result: dict[str, Any] = {"lr_schedule": fn_type, "lr_warmup_pct": value.get("warmup_pct", 0.0)}
    if "start_val" in value:
        if data.get("lr", value["start_val"]) != value["start_val"]:
            raise SPDUserError("lr differs from lr_schedule.start_val; keep one")
        result["lr"] = value["start_val"]
    shown = ", ".join(f"{k}: {v}" for k, v in result.items())
    return result, f"lr_schedule block -> {shown}"


def _hf_name(value: Any, data: dict[str, Any]) -> Translated:
    _refuse_both(data, "pretrained_model_name", ("pretrained_model_name_hf",))
    return {"pretrained_model_name_hf": value}, "pretrained_model_name -> pretrained_model_name_hf"


LATER_KEYS: dict[str, KeyTranslation] = {
    "loss_metric_configs": _losses,
    "n_mask_samples": _n_mask_samples,
    "eval_metric_configs": _eval_metrics,
    "module_info": _module_info,
    "identity_module_info": _identity_module_info,
    "ci_fn_type": _ci_fn_type_key,
    "ci_config": _ci_config,
    "lr_schedule": _lr_schedule,
    "pretrained_model_name": _hf_name,
}


def translate_later(data: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """The mapping with the later format's own keys in this format (each in the place of the key
    it replaces), and one note per translated key."""
    result: dict[str, Any] = {}
    notes: list[str] = []
    for key, value in data.items():
        translate = LATER_KEYS.get(key)
        if translate is None:
            result[key] = value
            continue
        # A key it writes that the file also has was refused by the translation (or, for lr,
        # checked to be equal).
        replacement, note = translate(value, data)
        result.update(replacement)
        notes += [note] if note is not None else []
    return result, notes
