"""The original's persistent-PGD loss blocks (`PersistentPGDReconLoss`,
`PersistentPGDReconSubsetLoss`) as this project's `persistent_pgd_recon*` parameters.

The blocks state the sources' `optimizer` and `scope` (and `routing`, renamed by
`spd.config.original_later_blocks`); older ones state the scope as `batch_invariant` / `n_masks`
instead. docs/original_configs.md lists the mapping; the forms marked "assumed" there are our
reading of the original's keys.
"""

from typing import Any

from spd.errors import SPDUserError

PERSISTENT_PGD_CLASSES = {
    "PersistentPGDReconLoss": "persistent_pgd_recon",
    "PersistentPGDReconSubsetLoss": "persistent_pgd_recon_subset",
}
OLD_SCOPE_KEYS = ("batch_invariant", "n_masks")


def _old_scope(batch_invariant: Any, n_masks: Any, where: str) -> dict[str, Any]:
    """The scope that `batch_invariant` / `n_masks` spell (assumed): N > 1 masks repeat across the
    batch, one batch-invariant mask is broadcast across it, and otherwise each position has its
    own."""
    if n_masks is not None and n_masks != 1:
        if batch_invariant is False:
            raise SPDUserError(
                f"{where}: n_masks {n_masks} with batch_invariant false has no scope here; "
                "remove one of them"
            )
        return {"type": "repeat_across_batch", "n_sources": n_masks}
    if batch_invariant is False:
        return {"type": "per_position"}
    return {"type": "broadcast_across_batch"}


def _optimizer(block: Any) -> Any:
    """`betas: [β1, β2]` (assumed spelling) as `beta1`, `beta2`; anything else unchanged."""
    if not isinstance(block, dict) or "betas" not in block:
        return block
    optimizer = {k: v for k, v in block.items() if k != "betas"}
    betas = block["betas"]
    if isinstance(betas, list | tuple) and len(betas) == 2:
        optimizer["beta1"], optimizer["beta2"] = betas
    else:
        optimizer["betas"] = betas  # left for the parameter check to name
    return optimizer


def persistent_pgd_params(params: dict[str, Any], where: str) -> dict[str, Any]:
    """A persistent-PGD block's parameters (classname, coeff and renames already taken off) in
    this project's form: the old scope keys as a `scope` block, `n_masks` in a `scope` block as
    `n_sources`, and Adam's `betas` pair as `beta1` / `beta2`."""
    old = {key: params.pop(key) for key in OLD_SCOPE_KEYS if key in params}
    if old and "scope" in params:
        raise SPDUserError(
            f"{where}: give the scope either as scope: or as {' / '.join(old)}, not both"
        )
    if old:
        params["scope"] = _old_scope(old.get("batch_invariant"), old.get("n_masks"), where)
    scope = params.get("scope")
    if isinstance(scope, dict) and "n_masks" in scope:
        params["scope"] = {("n_sources" if k == "n_masks" else k): v for k, v in scope.items()}
    if "optimizer" in params:
        params["optimizer"] = _optimizer(params["optimizer"])
    return params
