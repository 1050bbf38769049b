"""Stage 11, what the decomposed subcomponents do: a streaming analysis pass over a run's data
(`analyze`, `sources`, `pass_loop`, `accumulators`, `directions`), its stored form (`store`), the
static component browser (`browser`) and the `spd-analyze` / `spd-browse` commands (`cli`).

May import: every stage up to `spd.experiments`.
"""
