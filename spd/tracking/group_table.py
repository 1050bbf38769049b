"""The per-layer-group LM metrics of a run as tables, for its report.

`ce_and_kl_per_group` and `ci_l0_per_group` (spd/eval/group_ce_kl.py, group_ci_l0.py) log one key
per statistic, mask kind and layer group (`ce_kl/ce_unrecovered/ci/layer_0`, `ci_l0/group/total`).
A report shows each statistic as one table: a row per group, a column per mask kind, with the
group's CI-L0 beside them. The last value of each key is shown, from `final/` if the summary copied
it there, else from `eval/`.
"""

import html

from spd.eval.layer_groups import CE_KL_STATS, parse_group_key

_TITLES = {
    "ce_unrecovered": "CE unrecovered (0: the target's CE; 1: the group's weights removed)",
    "kl": "KL to the target (nats per token)",
    "ce_diff": "CE minus the target's CE (nats per token)",
}
# Mask kinds in the order a reader compares them; any other kind (e.g. adversarial) follows.
_KIND_ORDER = ("ci", "rounded", "stochastic", "adversarial", "unmasked", "random", "zero")


def group_values(final: dict[str, tuple[int, float]]) -> dict[tuple[str, str, str], float]:
    """{(statistic, mask kind, group): last value} of the per-group keys, `final/` before `eval/`."""
    values: dict[tuple[str, str, str], float] = {}
    for prefix in ("eval/", "final/"):  # final/ second, so it wins
        for key, (_, value) in final.items():
            parsed = parse_group_key(key.removeprefix(prefix)) if key.startswith(prefix) else None
            if parsed is not None:
                values[parsed] = value
    return values


def _kind_rank(kind: str) -> tuple[int, str]:
    return (_KIND_ORDER.index(kind) if kind in _KIND_ORDER else len(_KIND_ORDER), kind)


def _cell(value: float | None) -> str:
    return f'<td class="num">{"" if value is None else f"{value:.4g}"}</td>'


def group_tables_html(final: dict[str, tuple[int, float]]) -> str:
    """One table per logged statistic (rows: groups in logged order; columns: CI-L0, then each
    mask kind); empty when the run logged no per-group metric."""
    values = group_values(final)
    groups = list(dict.fromkeys(group for _, _, group in values))
    has_l0 = any(stat == "ci_l0" for stat, _, _ in values)
    tables: list[str] = []
    for stat in CE_KL_STATS:
        kinds = sorted({k for s, k, _ in values if s == stat}, key=_kind_rank)
        if not kinds:
            continue
        head = ("<th>CI-L0</th>" if has_l0 else "") + "".join(
            f"<th>{html.escape(kind)}</th>" for kind in kinds
        )
        rows = "".join(
            f"<tr><td>{html.escape(group)}</td>"
            + (_cell(values.get(("ci_l0", "", group))) if has_l0 else "")
            + "".join(_cell(values.get((stat, kind, group))) for kind in kinds)
            + "</tr>"
            for group in groups
        )
        tables.append(
            f'<h3>{html.escape(_TITLES[stat])}</h3><table class="groups"><thead><tr>'
            f"<th>group</th>{head}</tr></thead><tbody>{rows}</tbody></table>"
        )
    if not tables and has_l0:
        rows = "".join(
            f"<tr><td>{html.escape(group)}</td>{_cell(values.get(('ci_l0', '', group)))}</tr>"
            for group in groups
        )
        tables.append(
            '<table class="groups"><thead><tr><th>group</th><th>CI-L0</th></tr></thead>'
            f"<tbody>{rows}</tbody></table>"
        )
    return "".join(tables)
