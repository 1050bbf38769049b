"""The later original format's `{classname, ...}` blocks: loss terms and evaluation metrics.

The original implementation's later configs list their loss terms as `loss_metric_configs` and
their evaluations as `eval_metric_configs`: blocks named by `classname`, each with its parameters
inline (a loss block also carries its `coeff`). `translate_loss_blocks` turns the first into
`losses:` entries, `translate_eval_blocks` the second into `metrics:` / `figures:` entries. A
classname whose feature this project does not have yet is an `SPDUserError` that says so.
docs/original_configs.md lists the mapping; rows marked "assumed" there are our reading.
"""

from typing import Any

from spd.config.evaluators import validate_specs
from spd.config.loss_registry import LOSS_TERMS, validated_params
from spd.config.original_format import EVAL_METRIC_CLASSES, Spec
from spd.config.original_persistent_pgd import PERSISTENT_PGD_CLASSES, persistent_pgd_params
from spd.errors import SPDUserError

LOSS_CLASSES = {
    "FaithfulnessLoss": "faithfulness",
    "CIMaskedReconLoss": "recon",
    "CIMaskedReconLayerwiseLoss": "recon_layerwise",
    "StochasticReconLoss": "stochastic_recon",
    "StochasticReconLayerwiseLoss": "stochastic_recon_layerwise",
    "StochasticReconSubsetLoss": "stochastic_recon_subset",
    "CIMaskedReconSubsetLoss": "ci_masked_recon_subset",
    "StochasticHiddenActsReconLoss": "hidden_act_recon",
    "ImportanceMinimalityLoss": "importance_minimality",
    "PGDReconLoss": "pgd_recon",
    "PGDReconSubsetLoss": "pgd_recon_subset",
    "PGDReconLayerwiseLoss": "pgd_recon_layerwise",
    **PERSISTENT_PGD_CLASSES,
}
# The fresh PGD classes (and the multi-batch one) as eval blocks: the metric of the same attack
# on the eval batches (assumed names).
PGD_METRIC_CLASSES = {
    "PGDReconLoss": "pgd_recon",
    "PGDReconSubsetLoss": "pgd_recon_subset",
    "PGDReconLayerwiseLoss": "pgd_recon_layerwise",
    "PGDMultiBatchReconLoss": "pgd_recon_multibatch",
}
# `mask_scope`: the (assumed) older key of the fresh PGD terms' `scope`.
PARAM_RENAMES = {"routing": "router", "mask_scope": "scope"}
# importance_minimality's ε is fixed here (spd.losses.terms.importance_minimality.IMPORTANCE_EPS;
# the config stage cannot import it): a block may state this value, no other.
FIXED_IMPORTANCE_EPS = 1e-12


def _block(entry: Any, where: str) -> dict[str, Any]:
    if not isinstance(entry, dict) or not isinstance(entry.get("classname"), str):
        raise SPDUserError(f"{where} must be a mapping with a 'classname'")
    return entry


def _loss_term(classname: str, where: str) -> str:
    name = LOSS_CLASSES.get(classname)
    if name is None:
        raise SPDUserError(
            f"{where}: classname '{classname}' has no translation into this format; translated: "
            f"{', '.join(LOSS_CLASSES)} (docs/original_configs.md)"
        )
    return name


def _loss_params(name: str, block: dict[str, Any], where: str) -> dict[str, Any]:
    params = {
        PARAM_RENAMES.get(k, k): v for k, v in block.items() if k not in ("classname", "coeff")
    }
    if name in PERSISTENT_PGD_CLASSES.values():
        params = persistent_pgd_params(params, where)
    fields = LOSS_TERMS.get(name).params.model_fields
    fixed_eps = name == "importance_minimality" and "eps" not in fields
    if fixed_eps and params.pop("eps", FIXED_IMPORTANCE_EPS) != FIXED_IMPORTANCE_EPS:
        raise SPDUserError(
            f"{where}: eps is fixed at {FIXED_IMPORTANCE_EPS} here; remove it or set that value"
        )
    try:
        validated_params(name, params)
    except ValueError as err:
        raise SPDUserError(f"{where}: {err}") from None
    return params


def translate_loss_blocks(entries: Any, n_mask_samples: Any) -> list[Spec]:
    """`losses:` entries for `loss_metric_configs`, in the order the terms are computed here.

    `n_mask_samples` (the original's top-level key; None if absent) goes into the params of
    every translated term that draws masks.
    """
    if not isinstance(entries, list):
        raise SPDUserError("loss_metric_configs must be a list of {classname, coeff, ...} blocks")
    specs: dict[str, Spec] = {}
    for index, entry in enumerate(entries):
        where = f"loss_metric_configs[{index}]"
        block = _block(entry, where)
        where = f"{where} ({block['classname']})"
        name = _loss_term(block["classname"], where)
        if "coeff" not in block:
            raise SPDUserError(f"{where} has no 'coeff'")
        if name in specs:
            raise SPDUserError(f"{where}: classname listed twice; keep one block")
        params = _loss_params(name, block, where)
        if (
            n_mask_samples is not None
            and "n_mask_samples" in LOSS_TERMS.get(name).params.model_fields
        ):
            params["n_mask_samples"] = n_mask_samples
        specs[name] = {"name": name, "coeff": block["coeff"], "params": params}
    order = [term.name for term in LOSS_TERMS.in_order()]
    return sorted(specs.values(), key=lambda spec: order.index(spec["name"]))


def _pgd_metric(name: str, block: dict[str, Any], where: str) -> Spec:
    """A PGD block of `eval_metric_configs` as the metric `name` (a `coeff` is dropped)."""
    params = {
        PARAM_RENAMES.get(k, k): v
        for k, v in block.items()
        if k not in ("classname", "coeff") and v is not None
    }
    try:
        validate_specs([(name, params)], kind="metric")
    except ValueError as err:
        raise SPDUserError(f"{where}: {err}") from None
    return {"name": name, "params": params}


def translate_eval_blocks(entries: Any) -> tuple[list[Spec], list[Spec]]:
    """`metrics:` and `figures:` entries for `eval_metric_configs`.

    A parameter given as null is left out (the original's "not given"); the rest translate as the
    earlier format's `extra_init_kwargs` of the same classname (`EVAL_METRIC_CLASSES`).
    """
    if not isinstance(entries, list):
        raise SPDUserError("eval_metric_configs must be a list of {classname, ...} blocks")
    metrics: list[Spec] = []
    figures: list[Spec] = []
    for index, entry in enumerate(entries):
        block = _block(entry, f"eval_metric_configs[{index}]")
        classname = block["classname"]
        where = f"eval_metric_configs[{index}] ({classname})"
        if classname in PGD_METRIC_CLASSES:
            metrics.append(_pgd_metric(PGD_METRIC_CLASSES[classname], block, where))
            continue
        if classname in LOSS_CLASSES:
            raise SPDUserError(
                f"{where}: loss terms are not evaluated on eval batches here (training logs them "
                "as train/loss/<name>); remove the block"
            )
        translate = EVAL_METRIC_CLASSES.get(classname)
        if translate is None:
            raise SPDUserError(
                f"{where}: classname '{classname}' is not supported here yet; remove the block; "
                f"translated: {', '.join(EVAL_METRIC_CLASSES)} (docs/original_configs.md)"
            )
        kwargs = {k: v for k, v in block.items() if k != "classname" and v is not None}
        kind, spec = translate(kwargs, where)
        (metrics if kind == "metric" else figures).append(spec)
    return metrics, figures
