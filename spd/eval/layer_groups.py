"""Layer groups of a decomposed model, and the metric keys of the per-group LM metrics.

A layer group is a set of decomposed modules the per-group metrics (`ce_and_kl_per_group`,
`ci_l0_per_group`) score together. By default each transformer block is one group, found from a
`layers.<i>.` (Llama) or `h.<i>.` (GPT-2) part of the module name: `layer_0`, `layer_1`, …; a
module outside the blocks (an embedding, the unembedding) is a group of its own, named by the
module; `total` holds every module. A config may name its own groups instead, each a list of
fnmatch patterns over the module names (`total` is always added).

No torch here: the reports (`spd.tracking`) read the keys back with `parse_group_key`.
"""

import fnmatch
import re
from collections.abc import Mapping, Sequence
from typing import Annotated

from pydantic import StringConstraints

from spd.errors import SPDUserError

TOTAL = "total"
# The transformer block a module belongs to: `model.layers.3.mlp.c_fc`, `transformer.h.0.attn`.
_BLOCK_INDEX = re.compile(r"(?:^|\.)(?:layers|h)\.(\d+)(?:\.|$)")
# A group name becomes one part of a metric key, so it may not hold "/".
GroupName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.\-]+$")]

# The statistics of `ce_and_kl_per_group`, as in `ce_and_kl` (spd/eval/lm_metrics.py).
CE_KL_STATS = ("ce_unrecovered", "kl", "ce_diff")
_CE_KL_KEY = re.compile(r"^ce_kl/(ce_unrecovered|kl|ce_diff)/([^/]+)/([^/]+)$")
_CI_L0_KEY = re.compile(r"^ci_l0/group/([^/]+)$")


def default_groups(module_names: Sequence[str]) -> dict[str, list[str]]:
    """`layer_<i>` for the modules of block i (in block order), one group per module outside the
    blocks, then `total`."""
    blocks: dict[int, list[str]] = {}
    others: dict[str, list[str]] = {}
    for name in module_names:
        match = _BLOCK_INDEX.search(name)
        if match is None:
            others[name] = [name]
        else:
            blocks.setdefault(int(match[1]), []).append(name)
    groups = {f"layer_{i}": blocks[i] for i in sorted(blocks)}
    return {**groups, **others, TOTAL: list(module_names)}


def configured_groups(
    module_names: Sequence[str], patterns: Mapping[str, Sequence[str]] | None
) -> dict[str, list[str]]:
    """The groups a metric scores: the default ones, or each configured group's modules (those
    matching any of its fnmatch patterns, in module order) plus `total`.

    A configured group that matches no module is an error naming the modules.
    """
    if patterns is None:
        return default_groups(module_names)
    groups: dict[str, list[str]] = {}
    for group, group_patterns in patterns.items():
        members = [n for n in module_names if any(fnmatch.fnmatch(n, p) for p in group_patterns)]
        if not members:
            raise SPDUserError(
                f"layer group '{group}' (patterns {list(group_patterns)}) matches no decomposed "
                f"module; the decomposed modules are: {', '.join(module_names)}"
            )
        groups[group] = members
    return {**groups, TOTAL: list(module_names)}


def ce_kl_key(stat: str, mask: str, group: str) -> str:
    """The key of one CE/KL statistic of a group under one mask kind, e.g.
    `ce_kl/ce_unrecovered/ci/layer_0`."""
    return f"ce_kl/{stat}/{mask}/{group}"


def ci_l0_key(group: str) -> str:
    """The key of a group's CI-L0, e.g. `ci_l0/group/layer_0`."""
    return f"ci_l0/group/{group}"


def parse_group_key(key: str) -> tuple[str, str, str] | None:
    """(statistic, mask kind, group) of a per-group key without its `eval/` or `final/` prefix
    (`("ci_l0", "", group)` for a CI-L0 key); None for any other key."""
    match = _CE_KL_KEY.match(key)
    if match is not None:
        return match[1], match[2], match[3]
    match = _CI_L0_KEY.match(key)
    return ("ci_l0", "", match[1]) if match is not None else None
