"""The decisive numbers of a run, shown at the top of its report, and the final table's rows.

For a language model those are the CE and KL the decomposition leaves unrecovered under the CI
and the stochastic masks; for the toys, the ground-truth scores the task writes as `final/…`.
`table_keys` drops an `eval/…` row whose `final/…` twin (the summary copies the last
evaluation) holds the same value at the same step.
"""

import html
import math

# (key suffix, what it says): the LM's summary copies the last evaluation under final/.
LM_HEADLINE = (
    ("ce_kl/ce_unrecovered/ci", "CE unrecovered, CI mask"),
    ("ce_kl/ce_unrecovered/stochastic", "CE unrecovered, stochastic mask"),
    ("ce_kl/kl/ci", "KL to target, CI mask"),
    ("ce_kl/kl/stochastic", "KL to target, stochastic mask"),
)
LM_MEANING = (
    "CE unrecovered is the fraction of the gap between the target's loss and the loss with the "
    "decomposed weights zeroed that the masked model leaves (0: as good as the target, 1: no "
    "better than removing the weights); KL is in nats per token."
)
TOY_MEANING = (
    "Ground-truth scores of the toy task: MMCS and ML2R near 1 mean each true feature direction "
    "has one subcomponent of matching direction and norm; CI-pattern errors near 0 mean each "
    "feature activates its own subcomponent only."
)


def headline_numbers(final: dict[str, tuple[int, float]]) -> list[tuple[str, str, float]]:
    """(key, label, value) of the run's decisive numbers, best source first: `final/`, then the
    last `eval/` value."""
    found: list[tuple[str, str, float]] = []
    for suffix, label in LM_HEADLINE:
        for prefix in ("final/", "eval/"):
            if prefix + suffix in final:
                found.append((prefix + suffix, label, final[prefix + suffix][1]))
                break
    if found:
        return found
    return [
        (key, key.removeprefix("final/"), value)
        for key, (_, value) in sorted(final.items())
        if key.startswith("final/") and not key.startswith("final/loss/")
    ]


def headline_html(final: dict[str, tuple[int, float]]) -> str:
    """The decisive numbers with one line saying what they mean; empty when there are none."""
    numbers = headline_numbers(final)
    if not numbers:
        return ""
    meaning = LM_MEANING if any("ce_kl/" in key for key, _, _ in numbers) else TOY_MEANING
    items = "".join(
        f'<span class="item" data-key="{html.escape(key)}"><span class="value">{value:.4g}</span>'
        f"{html.escape(label)}</span>"
        for key, label, value in numbers
    )
    return f'<div class="headline"><div>{items}</div><p>{html.escape(meaning)}</p></div>'


def table_keys(final: dict[str, tuple[int, float]]) -> list[str]:
    """The metric keys of the final table, without an `eval/` key repeated by its `final/` twin."""

    def repeated(key: str) -> bool:
        twin = final.get("final/" + key.removeprefix("eval/"))
        if not key.startswith("eval/") or twin is None:
            return False
        step, value = final[key]
        return twin[0] == step and math.isclose(twin[1], value, rel_tol=1e-12, abs_tol=0.0)

    return [key for key in final if not repeated(key)]
