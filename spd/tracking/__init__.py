"""Stage 9, tracking and reports: the W&B sink (`wandb_sink`) and the HTML reports (`report`).

May import: every stage up to `spd.train`.
"""
