"""Stage 10, the registered experiments (`registry`), the tasks (`tasks`, `decompose`, `generic/`),
the toy targets' training configs (`train_configs`), the shared decomposition script body
(`run_decomposition`) and each experiment's targets, training script, configs, decomposition
script and plots (`tms/`, `resid_mlp/`, `lm/`).

May import: every stage up to `spd.tracking`.
"""
