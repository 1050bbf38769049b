"""Stage 10, the tasks: the `Task` plug-in type (`tasks`), the registered experiments
(`registry`, `experiment_spec`), running any task (`decompose`), the toy targets' training
configs (`train_configs`), the shared decomposition script body (`run_decomposition`) and one
folder per task with its `task.py`, targets, training script, configs, decomposition script and
plots (`tms/`, `resid_mlp/`, `lm/`, `generic/`).

May import: every stage up to `spd.tracking`.
"""
