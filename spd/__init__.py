"""Stochastic Parameter Decomposition (SPD).

The path data takes through the package:
YAML → `configs` → `target_loading` → `models.component_model` → `run_spd.optimize`
→ `losses` → `metrics` / `figures` → `run_dir` (and, optionally, W&B via the scripts).
"""
