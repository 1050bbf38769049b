"""Each decomposed module's C from the config's `C:` (a number, or `{module_pattern, C}` pairs).

The pairs' checks that need only the config (an empty list, a pattern listed twice) run when the
config is loaded; those that need the decomposed module names run here, when the model is built
or a run is checked before it starts: every module matched by exactly one pattern, every pattern
matching some module.
"""

import fnmatch
from collections.abc import Sequence

from spd.config.schema import ModuleC
from spd.errors import SPDUserError

MAX_NAMES_SHOWN = 20


def _shown(names: Sequence[str]) -> str:
    listed = ", ".join(f"'{n}'" for n in names[:MAX_NAMES_SHOWN])
    return listed + (
        f" and {len(names) - MAX_NAMES_SHOWN} more" if len(names) > MAX_NAMES_SHOWN else ""
    )


def module_C(C: int | Sequence[ModuleC], module_names: Sequence[str]) -> dict[str, int]:
    """{module name: its C} for the decomposed `module_names`, in their order.

    A single number is every module's C. With pairs, a module matched by two patterns or by none,
    or a pattern matching no module, is an `SPDUserError` naming them and the fix.
    """
    if isinstance(C, int):
        return dict.fromkeys(module_names, C)
    matches = {
        pair.module_pattern: [
            n for n in module_names if fnmatch.fnmatchcase(n, pair.module_pattern)
        ]
        for pair in C
    }
    unused = [pattern for pattern, hits in matches.items() if not hits]
    if unused:
        raise SPDUserError(
            f"C: module_pattern '{unused[0]}' matches no decomposed module (decomposed: "
            f"{_shown(module_names)}); correct or drop the pair"
        )
    resolved: dict[str, int] = {}
    for name in module_names:
        owners = [pair for pair in C if name in matches[pair.module_pattern]]
        if len(owners) > 1:
            raise SPDUserError(
                f"C: module '{name}' is matched by both '{owners[0].module_pattern}' and "
                f"'{owners[1].module_pattern}'; narrow the patterns so that each module matches one"
            )
        if owners:
            resolved[name] = owners[0].C
    unmatched = [n for n in module_names if n not in resolved]
    if unmatched:
        raise SPDUserError(
            f"C: no module_pattern matches the decomposed module(s) {_shown(unmatched)}; add a "
            "{module_pattern, C} pair for them"
        )
    return resolved
