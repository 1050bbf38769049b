"""The flat loss keys of earlier config versions, translated into `losses:` entries.

Before loss terms had parameter blocks, a config gave each term a top-level `<term>_coeff` (null:
not computed) and the terms' parameters as top-level keys: `pnorm` and `p_anneal_*` (the p
schedule of importance minimality, which schatten followed), `is_embed_unembed_recon` (embedding
recon through `lm_head`) and `n_mask_samples` (mask draws of every stochastic term). Shipped and
user configs, sweeps and the `final_config.yaml` of every stored run use them, so they keep
loading: `translate_flat_losses` turns a mapping in that form into one with `losses:` and one
note per flat key (the loader prints each as a warning line naming the new form), and
`flat_override_paths` turns a flat command-line override into the dotted paths of the new form.
A flat key the file does not give has the default it had then. These keys are a closed set:
new terms and parameters exist only in `losses:`.
"""

import json
from typing import Any

from spd.errors import SPDUserError

# Coefficient defaults of the flat form (a term not listed there was off unless given).
FLAT_COEFF_DEFAULTS: dict[str, float | None] = {
    "faithfulness": 1.0,
    "recon": None,
    "recon_layerwise": None,
    "stochastic_recon": 1.0,
    "stochastic_recon_layerwise": None,
    "embedding_recon": None,
    "importance_minimality": 1e-3,
    "schatten": None,
    "out_recon": None,
}
P_SCHEDULE_KEYS = ("pnorm", "p_anneal_start_frac", "p_anneal_final_p", "p_anneal_end_frac")
# The terms that drew `n_mask_samples` masks each.
SAMPLED_TERMS = ("stochastic_recon", "stochastic_recon_layerwise", "embedding_recon")
FLAT_COEFF_KEYS = {f"{name}_coeff": name for name in FLAT_COEFF_DEFAULTS}
FLAT_KEYS = frozenset(
    [*FLAT_COEFF_KEYS, *P_SCHEDULE_KEYS, "is_embed_unembed_recon", "n_mask_samples"]
)


def flat_override_paths(key: str, listed: list[str]) -> list[str]:
    """The dotted `losses.<term>…` paths a flat override `key` sets, given the terms `listed`
    in the config's `losses:` (`n_mask_samples` sets it on each listed stochastic term)."""
    if key in FLAT_COEFF_KEYS:
        return [f"losses.{FLAT_COEFF_KEYS[key]}.coeff"]
    if key in P_SCHEDULE_KEYS:
        return [f"losses.importance_minimality.params.{key}"]
    if key == "is_embed_unembed_recon":
        return ["losses.embedding_recon.params.unembed"]
    return [f"losses.{name}.params.n_mask_samples" for name in SAMPLED_TERMS if name in listed]


def translate_flat_losses(data: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """`data` with its flat loss keys replaced by `losses:`, and one note per flat key.

    A mapping without flat keys is returned as it is; one with both forms is an `SPDUserError`.
    """
    flat = [key for key in data if key in FLAT_KEYS]
    if not flat:
        return data, []
    if "losses" in data:
        raise SPDUserError(
            f"config has both losses: and the flat loss key '{flat[0]}'; move it into its "
            "term's losses: entry"
        )
    result = {key: value for key, value in data.items() if key not in FLAT_KEYS}
    coeffs = {
        name: data.get(f"{name}_coeff", default) for name, default in FLAT_COEFF_DEFAULTS.items()
    }
    entries: dict[str, dict[str, Any]] = {
        name: {"name": name, "coeff": coeff} for name, coeff in coeffs.items() if coeff is not None
    }
    notes = [_coeff_note(key, data[key]) for key in flat if key in FLAT_COEFF_KEYS]
    notes += _move_p_schedule(data, entries)
    if "is_embed_unembed_recon" in data:
        notes.append(
            _param_note(data, "is_embed_unembed_recon", entries, ["embedding_recon"], "unembed")
        )
    if "n_mask_samples" in data:
        sampled = [name for name in SAMPLED_TERMS if name in entries]
        notes.append(_param_note(data, "n_mask_samples", entries, sampled, "n_mask_samples"))
    result["losses"] = list(entries.values())
    return result, notes


def _coeff_note(key: str, value: Any) -> str:
    name = FLAT_COEFF_KEYS[key]
    if value is None:
        return f"flat loss key '{key}: null' -> leave '{name}' out of losses:"
    return f"flat loss key '{key}' -> losses: [{{name: {name}, coeff: {value}}}]"


def _param_note(
    data: dict[str, Any],
    key: str,
    entries: dict[str, dict[str, Any]],
    terms: list[str],
    param: str,
) -> str:
    """Put flat `key` into `params.<param>` of each listed term of `terms`; the note says where."""
    for name in terms:
        if name in entries:
            entries[name].setdefault("params", {})[param] = data[key]
    targets = [name for name in terms if name in entries]
    if not targets:
        return f"flat loss key '{key}' dropped: no term in losses: takes it"
    shown = json.dumps(data[key])
    where = ", ".join(f"{{name: {name}, params: {{{param}: {shown}}}}}" for name in targets)
    return f"flat loss key '{key}' -> losses: [{where}]"


def _move_p_schedule(data: dict[str, Any], entries: dict[str, dict[str, Any]]) -> list[str]:
    """The p schedule goes to importance_minimality. Without that term, a fixed p (no annealing)
    goes to schatten's own `pnorm`; an annealed one has no term to follow there."""
    given = [key for key in P_SCHEDULE_KEYS if key in data]
    if not given:
        return []
    if "importance_minimality" in entries:
        return [_param_note(data, key, entries, ["importance_minimality"], key) for key in given]
    if "schatten" not in entries:
        return [f"flat loss key '{key}' dropped: no term in losses: takes it" for key in given]
    if data.get("p_anneal_final_p") is not None:
        raise SPDUserError(
            "p annealing (p_anneal_final_p) with importance_minimality_coeff null has no "
            "translation: schatten follows importance_minimality's p schedule; list "
            "importance_minimality, or give schatten a fixed params: {pnorm: ...}"
        )
    notes = [f"flat loss key '{key}' dropped: p is not annealed" for key in given if key != "pnorm"]
    if "pnorm" in data:
        notes.append(_param_note(data, "pnorm", entries, ["schatten"], "pnorm"))
    return notes
