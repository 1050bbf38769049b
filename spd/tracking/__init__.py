"""Stage 9, tracking and reports: the W&B sink (`wandb_sink`) and the HTML reports (`report`, with
`curves`, `headline` and the per-layer-group tables of `group_table`).

May import: every stage up to `spd.train`.
"""
